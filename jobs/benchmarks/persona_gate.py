"""The persona gate measured: the indirect-protected-attribute detector on its hand-written cases,
the whole gate on the paper's real personas, and its latency.

    python jobs/benchmarks/persona_gate.py            # the report
    python jobs/benchmarks/persona_gate.py --tune     # choose the thresholds on the tune half

The cases (persona_ray/data/persona_gate_cases.yaml) are personas whose attribute part reveals a
protected attribute in words no list names ("indirect") and look-alikes that use nearby words
innocently ("benign"), split once into a tune half and a held-out half. `--tune` looks at the
tune half only (and, where ../shared/data has them, refuses at most 0.5 % of the real personas);
the report gives recall (indirect cases refused) and false-positive rate (benign cases refused)
on both halves with counts and 95 % Wilson intervals; only the held-out numbers say how the
detector generalises. The real-persona part needs ../shared/data/beavertails-test-personas.jsonl
(998 personas written by Llama-405B): a clone has no ../shared, and the report says so and skips it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # latency.py beside this file

from latency import p50_p99  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
REAL_PERSONAS = REPO.parent / "shared" / "data" / "beavertails-test-personas.jsonl"
REAL_REFUSALS_ALLOWED = 0.005  # --tune: the share of real personas the detector may refuse


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(successes: int, n: int) -> str:
    low, high = wilson(successes, n)
    return f"{successes:>3}/{n:<3} = {successes / n:6.1%}  [95 % CI {low:5.1%} - {high:5.1%}]"


def real_personas() -> list[str] | None:
    if not REAL_PERSONAS.exists():
        return None
    rows = [json.loads(line) for line in REAL_PERSONAS.read_text().splitlines() if line.strip()]
    return [row[side] for row in rows for side in ("chosen_persona", "rejected_persona")]


def tune() -> None:
    """Grid search on the tune half: the largest recall - FPR (Youden's J), refusing at most
    REAL_REFUSALS_ALLOWED of the real personas the rules accept; ties: higher threshold, then wider margin."""
    from persona_ray.core import persona_gate as gate
    from persona_ray.core.persona import validate_persona

    cases = gate.load_cases("tune")
    scores = gate.similarity_scores([c["persona"] for c in cases])
    indirect = [s for c, s in zip(cases, scores) if c["kind"] == "indirect"]
    benign = [s for c, s in zip(cases, scores) if c["kind"] == "benign"]
    real = real_personas()
    real_scores = gate.similarity_scores([p for p in real if validate_persona(p).valid]) if real else []
    if real is None:
        print(f"{REAL_PERSONAS} not found: tuning without the real-persona limit")
    best = None
    for t in range(20, 61):
        for m in range(0, 16):
            threshold, margin = t / 100, m / 100
            hits = sum(gate.is_protected(s, threshold, margin) for s in indirect)
            false = sum(gate.is_protected(s, threshold, margin) for s in benign)
            real_refused = sum(gate.is_protected(s, threshold, margin) for s in real_scores)
            if real_scores and real_refused > REAL_REFUSALS_ALLOWED * len(real_scores):
                continue
            key = (hits / len(indirect) - false / len(benign), threshold, margin)
            if best is None or key > best[0]:
                best = (key, hits, false, real_refused)
    (j, threshold, margin), hits, false, real_refused = best
    print(f"tune half: {len(indirect)} indirect, {len(benign)} benign")
    print(f"chosen: PROTECTED_SIMILARITY = {threshold:.2f}, MARGIN = {margin:.2f}  (J = {j:.3f}; "
          f"recall {hits}/{len(indirect)}, false positives {false}/{len(benign)}, "
          f"real personas refused {real_refused}/{len(real_scores)})")
    same = (threshold, margin) == (gate.PROTECTED_SIMILARITY, gate.MARGIN)
    print("persona_gate.py has these values" if same else
          f"persona_gate.py has {gate.PROTECTED_SIMILARITY:.2f} / {gate.MARGIN:.2f}: update it")


def report_cases() -> None:
    from persona_ray.core import persona_gate as gate

    print(f"== detector on the cases (PROTECTED_SIMILARITY {gate.PROTECTED_SIMILARITY}, MARGIN {gate.MARGIN})")
    for half in ("tune", "held_out"):
        cases = gate.load_cases(half)
        results = gate.gate_personas([c["persona"] for c in cases])  # the whole gate: lists + detector
        refused = [not r.valid for r in results]
        indirect = [r for c, r in zip(cases, refused) if c["kind"] == "indirect"]
        benign = [r for c, r in zip(cases, refused) if c["kind"] == "benign"]
        print(f"{half:<8}  recall {rate(sum(indirect), len(indirect))}")
        print(f"{'':<8}  FPR    {rate(sum(benign), len(benign))}")
        if half == "held_out":
            by_category: dict[str, list[int]] = {}
            for c, r in zip(cases, refused):
                if c["kind"] == "indirect":
                    by_category.setdefault(c["category"], []).append(r)
            print("held-out recall by category: " + ", ".join(
                f"{category} {sum(v)}/{len(v)}" for category, v in by_category.items()))
            for c, r, parsed in zip(cases, refused, results):
                if (c["kind"] == "indirect") != r:
                    what = "missed" if c["kind"] == "indirect" else f"refused ({parsed.reason})"
                    print(f"  {what}: {c['persona']}")


def report_real() -> None:
    from persona_ray.core.persona import validate_persona
    from persona_ray.core.persona_gate import gate_personas

    print("== the real personas (../shared/data/beavertails-test-personas.jsonl)")
    personas = real_personas()
    if personas is None:
        print(f"skipped: {REAL_PERSONAS} not found (a clone has no ../shared/data)")
        return
    rules = [validate_persona(p) for p in personas]
    accepted_by_rules = [p for p, r in zip(personas, rules) if r.valid]
    gated = gate_personas(accepted_by_rules)
    kept = sum(r.valid for r in gated)
    print(f"validate_persona (the rules, model-free) accepts {len(accepted_by_rules)}/{len(personas)}")
    print(f"the gate (rules + detector) accepts {kept}/{len(accepted_by_rules)} of those "
          f"= {kept / len(accepted_by_rules):.2%} (must be >= 99 %)")
    for persona, result in zip(accepted_by_rules, gated):
        if not result.valid:
            print(f"  now refused ({result.reason}): {persona}")


def report_reference() -> None:
    """The reference set's 640 personas (persona_ray/data/reference/): written by hand for other
    work, none protected, never looked at when the thresholds were chosen: a benign set the
    detector's author did not write, so its refusals are false positives measured blind."""
    from persona_ray.core.persona_gate import gate_personas
    from persona_ray.dataset.reference import reference_rows

    personas = [row[f"{side}_persona"] for row in reference_rows() for side in ("chosen", "rejected")]
    refused = [(p, r.reason) for p, r in zip(personas, gate_personas(personas)) if not r.valid]
    print("== the reference set's personas (benign, written apart from the cases, never tuned on)")
    print(f"refused {rate(len(refused), len(personas))}")
    for persona, reason in refused:
        print(f"  refused ({reason}): {persona}")


def report_latency(load_s: float, repeats: int = 200) -> None:
    """One persona at a time (serving) and a batch of 256 (a PI batch), on torch's default threads
    and on one (what a Ray worker or Serve replica gets: Ray sets OMP_NUM_THREADS=1)."""
    import torch

    from persona_ray.core import persona_gate as gate

    print(f"== latency (CPU, this machine; the encoder and descriptions loaded in {load_s:.1f} s, once per process)")
    cases = [c["persona"] for c in gate.load_cases()]
    default_threads = torch.get_num_threads()
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        one = []
        for i in range(repeats):
            started = time.perf_counter()
            gate.gate_persona(cases[i % len(cases)])
            one.append((time.perf_counter() - started) * 1000)
        p50, p99 = p50_p99(one)
        batch = (cases * 2)[:256]
        times = []
        for _ in range(5):
            started = time.perf_counter()
            gate.gate_personas(batch)
            times.append(time.perf_counter() - started)
        total = statistics.median(times)
        print(f"torch threads {threads}: one persona p50 {p50:.1f} ms, p99 {p99:.1f} ms ({repeats} calls); "
              f"a batch of 256 {total * 1000:.0f} ms = {total / len(batch) * 1000:.2f} ms a persona (median of 5)")
    torch.set_num_threads(default_threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tune", action="store_true", help="choose the thresholds on the tune half and stop")
    args = parser.parse_args()
    if args.tune:
        tune()
        return
    from persona_ray.core.persona_gate import warm_up

    started = time.perf_counter()
    warm_up()
    load_s = time.perf_counter() - started
    report_cases()
    report_real()
    report_reference()
    report_latency(load_s)


if __name__ == "__main__":
    main()
