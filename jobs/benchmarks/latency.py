"""Latency summaries shared by the benchmark scripts (which run with this folder on sys.path)."""

from __future__ import annotations

import statistics


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 1]."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def p50_p99(values_ms: list[float]) -> tuple[float, float]:
    return statistics.median(values_ms), percentile(values_ms, 0.99)
