"""Engine and training defaults that follow the machine: dtypes from the CPU's bf16 instructions,
and the process layout of a one-CPU vLLM engine."""

from __future__ import annotations

import pytest


def test_auto_dtypes_follow_the_cpus_bf16_instructions(tmp_path, monkeypatch):
    """`dtype: auto` (vLLM) and `bf16: auto` (training) mean bf16 only where the CPU computes it
    natively; emulated bf16 is slower than fp32 (core/hardware.py)."""
    from types import SimpleNamespace

    from persona_ray.core import hardware
    from persona_ray.engines import vllm_engine
    from persona_ray.engines.settings import VLLMSettings
    from persona_ray.tailoring import SFTJobConfig
    from persona_ray.tailoring import base

    avx2, bf16 = tmp_path / "avx2", tmp_path / "bf16"
    avx2.write_text("processor : 0\nflags : fpu sse2 avx avx2 fma\n")
    bf16.write_text("processor : 0\nflags : fpu sse2 avx avx2 avx512f avx512_bf16\n")
    assert not hardware.cpu_has_native_bf16(str(avx2)) and hardware.cpu_has_native_bf16(str(bf16))
    assert not hardware.cpu_has_native_bf16(str(tmp_path / "missing"))

    plan = SimpleNamespace(max_steps=4, save_steps=2, eval_steps=None)
    for has_bf16, dtype in [(False, "float32"), (True, "auto")]:
        monkeypatch.setattr(vllm_engine, "cpu_has_native_bf16", lambda: has_bf16)
        monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: has_bf16)
        assert vllm_engine.engine_kwargs(VLLMSettings())["dtype"] == dtype
        assert vllm_engine.engine_kwargs(VLLMSettings(dtype="bfloat16"))["dtype"] == "bfloat16"  # asked for: kept
        assert vllm_engine.engine_kwargs(VLLMSettings(gpu=True))["dtype"] == "auto"
        auto = base.trl_arguments(SFTJobConfig(data="d", output="o", bf16="auto"), plan, str(tmp_path))
        assert auto["bf16"] is has_bf16
        assert base.trl_arguments(SFTJobConfig(data="d", output="o"), plan, str(tmp_path))["bf16"] is False
    with pytest.raises(ValueError, match="bf16"):
        SFTJobConfig(data="d", output="o", bf16="sometimes")


def test_a_one_cpu_engine_keeps_its_model_in_the_engine_process():
    """vLLM on CPU starts a worker process to pin OpenMP threads; an engine of one CPU has none to
    pin and skips it (VLLM_ENABLE_V1_MULTIPROCESSING=0); the KV cache size is always set on CPU, and
    every engine, GPU too, may take as long as configured to compile a job's guided-decoding pattern."""
    from persona_ray.engines.settings import VLLMSettings
    from persona_ray.engines.vllm_engine import engine_env

    timeout = {"VLLM_REGEX_COMPILATION_TIMEOUT_S": "120"}
    assert engine_env(VLLMSettings()) == {**timeout, "VLLM_CPU_KVCACHE_SPACE": "1",
                                          "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert engine_env(VLLMSettings(cpus_per_engine=4, cpu_kv_cache_gib=8)) == {**timeout, "VLLM_CPU_KVCACHE_SPACE": "8"}
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in engine_env(VLLMSettings(tensor_parallel_size=2))
    gpu = VLLMSettings(gpu=True, grammar_compile_timeout_s=30)
    assert engine_env(gpu) == {"VLLM_REGEX_COMPILATION_TIMEOUT_S": "30"}


def test_an_answer_with_no_tokens_is_an_engine_error():
    """vLLM drops a request whose guided-decoding pattern did not compile in time and Ray Data LLM
    passes it on as an answer with no text and no error: that is an engine error, never an empty
    persona; a real answer (one token at least) is kept, its finish told from the token budget."""
    from persona_ray.engines.vllm_engine import answer_row

    dropped = answer_row({"pair_id": "p1", "generated_text": "", "num_generated_tokens": 0,
                          "num_input_tokens": 40, "__inference_error__": ""}, max_tokens=8)
    assert dropped["finish_reason"] == "error" and "no tokens" in dropped["error"] and dropped["pair_id"] == "p1"
    answered = answer_row({"pair_id": "p2", "generated_text": "The user is", "num_generated_tokens": 8,
                           "num_input_tokens": 40}, max_tokens=8)
    assert (answered["finish_reason"], answered["error"], answered["generated_text"]) == ("length", "", "The user is")
    failed = answer_row({"generated_text": None, "__inference_error__": "ValueError: boom"}, max_tokens=8)
    assert (failed["finish_reason"], failed["error"]) == ("error", "ValueError: boom")
