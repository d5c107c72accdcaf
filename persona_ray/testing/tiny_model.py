"""A tiny random-weight Llama and a BPE tokenizer, built locally and cached on disk.

Used by tests, benchmarks and the embedded demo so that nothing is downloaded from a model hub.
The model is deterministic from its seed and the tokenizer from its training text (the bundled
sample data, exemplars and the persona world's personas), so the same inputs always give the same
directory contents.
It writes nonsense, but it exercises the real engines: vLLM and transformers load it like any
Hugging Face checkpoint. vLLM's CPU attention needs a head size of at least 32.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from persona_ray.core.models import default_cache_dir

TINY_MODEL_NAME = "tiny"  # the name configs use to ask for this model
# Every linear layer of its blocks: what the tests' and benchmarks' LoRA adapters adapt.
LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# A minimal chat template so chat-style clients work against the tiny model too.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    seed: int = 0
    # Small on purpose: on CPU, TRL scores every position against the whole vocabulary, and at
    # 4096 that was most of a DPO step (1.19 s vs 0.455 s at 1024: jobs/benchmarks/tiny_vocab.py).
    vocab_size: int = 1024
    hidden_size: int = 64
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 2  # head size 32
    max_position_embeddings: int = 4096


def _training_text() -> list[str]:
    """The bundled text the tokenizer learns from: the sample pairs, the PI exemplars and
    instruction, and the persona world's personas."""
    data = resources.files("persona_ray.data")
    texts = []
    for name in ("sample_pairs.jsonl", "pi_exemplars.yaml"):
        resource = data.joinpath(name)
        if resource.is_file():
            texts.extend(line for line in resource.read_text(encoding="utf-8").splitlines() if line.strip())
    from persona_ray.inference.prompt import INSTRUCTION
    from persona_ray.world.spec import DEFAULT_TYPES

    texts.append(INSTRUCTION)
    # The persona world's personas, each as often as a word must be seen to become a whole token.
    # Split into fragments they left the tiny model unable to tell the user types apart: on the
    # world's validation prompts PT-DPO's weakest type reached 0.79 with fragments and 0.947 with
    # whole words (vocabulary 1024, 80 DPO steps; the same as the 4096 vocabulary gave).
    texts.extend(persona_type.persona for _ in range(20) for persona_type in DEFAULT_TYPES)
    return texts


def _fingerprint(spec: TinyModelSpec, texts: list[str]) -> str:
    digest = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode())
    return digest.hexdigest()[:12]


def _train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def build_tiny_model(cache_dir: str | Path | None = None, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Return the directory of the tiny model, building it on first use (a few seconds)."""
    texts = _training_text()
    target = Path(cache_dir or default_cache_dir()) / f"tiny-llama-{_fingerprint(spec, texts)}"
    if (target / "config.json").exists():
        return target

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tokenizer(texts, spec.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)

    # Build in a temporary folder and rename, so a crash never leaves a half-written model.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target



def build_tiny_adapter(base: str | Path, out: str | Path, seed: int = 0) -> Path:
    """A LoRA adapter (PEFT folder) over the tiny model with random, non-zero weights, so that it
    visibly changes the model's output: for tests that serve an adapter beside its base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    # Every linear layer: on q and v alone the tiny model's greedy answer did not change.
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                           LoraConfig(r=8, lora_alpha=16, target_modules=list(LINEAR_LAYERS), init_lora_weights=False))
    model.save_pretrained(str(out))
    return Path(out)
