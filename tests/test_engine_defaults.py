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
    pin and skips it (VLLM_ENABLE_V1_MULTIPROCESSING=0); the KV cache size is always set."""
    from persona_ray.engines.settings import VLLMSettings
    from persona_ray.engines.vllm_engine import cpu_engine_env

    assert cpu_engine_env(VLLMSettings()) == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert cpu_engine_env(VLLMSettings(cpus_per_engine=4, cpu_kv_cache_gib=8)) == {"VLLM_CPU_KVCACHE_SPACE": "8"}
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in cpu_engine_env(VLLMSettings(tensor_parallel_size=2))
