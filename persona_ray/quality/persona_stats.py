"""PI quality without a judge: what a PI model's personas look like, measured by rules and by a
sentence encoder, so that it means something on a CPU where a small judge measures nothing.

    >>> rows = [{"pair_id": "p1", "chosen_persona": "The user is a hurried cook and prefers one short tip.",
    ...          "rejected_persona": "The user is a curious cook and prefers the chemistry behind each step."}]
    >>> persona_statistics(rows)["same_both_sides"]
    0.0

Data contract
    rows         one per pair: {"pair_id", "chosen_persona", "rejected_persona"}; a persona is
                 None or "" where PI wrote no valid one (it counts against `valid_rate`)
    reference    the same shape: hand-written (or teacher) personas of the same pairs
Statistics of one PI model (`persona_statistics`):
    pairs, personas      counts
    valid_rate           personas that pass the persona rules (core/persona.validate_persona)
    same_both_sides      pairs, among those with two valid personas, whose chosen and rejected
                         persona are the same persona said again (core/persona.near_copy)
    exemplar_copies      valid personas that are a near copy of a PI exemplar's persona
    distinct_rate        distinct valid personas (lower-cased, spaces collapsed) / valid personas
Against a reference (`reference_similarity`): the cosine of each persona with the reference
persona of the same pair and side (core/sentences MiniLM), 0 for a missing or invalid persona
(it explains nothing), the mean with a percentile 95 % bootstrap CI over pairs; for two models,
the paired difference on the pairs both were given, with its CI.
"""

from __future__ import annotations

import random
from typing import Any

from persona_ray.core.persona import near_copy, validate_persona
from persona_ray.core.schema import SIDES
from persona_ray.inference.prompt import exemplar_personas


def _valid(persona: Any) -> str | None:
    if not isinstance(persona, str) or not persona.strip():
        return None
    checked = validate_persona(persona)
    return checked.persona if checked.valid else None


def persona_statistics(rows: list[dict], exemplars: list[str] | None = None) -> dict[str, Any]:
    """The rule-based statistics above for one PI model's rows (exemplars: exemplar_personas())."""
    exemplars = exemplar_personas() if exemplars is None else exemplars
    valid = [{side: _valid(row.get(f"{side}_persona")) for side in SIDES} for row in rows]
    personas = [p for row in valid for p in row.values() if p]
    both = [row for row in valid if all(row.values())]
    total = 2 * len(rows)

    def share(count: int, of: int) -> float | None:
        return round(count / of, 4) if of else None

    return {
        "pairs": len(rows), "personas": total,
        "valid_rate": share(len(personas), total),
        "pairs_with_two_valid": len(both),
        "same_both_sides": share(sum(near_copy(r["chosen"], r["rejected"]) for r in both), len(both)),
        "exemplar_copies": share(sum(any(near_copy(p, e) for e in exemplars) for p in personas), len(personas)),
        "distinct_rate": share(len({" ".join(p.lower().split()) for p in personas}), len(personas)),
    }


def _pair_similarities(rows: list[dict], reference: dict[str, dict]) -> dict[str, float]:
    """pair id -> mean over both sides of cos(persona, reference persona); 0 for an invalid persona."""
    from persona_ray.core.sentences import encode_sentences

    shown = [row for row in rows if row["pair_id"] in reference]
    texts, refs, where = [], [], []
    for i, row in enumerate(shown):
        for side in SIDES:
            persona = _valid(row.get(f"{side}_persona"))
            if persona:
                texts.append(persona)
                refs.append(reference[row["pair_id"]][f"{side}_persona"])
                where.append(i)
    cosines = (encode_sentences(texts) * encode_sentences(refs)).sum(axis=1) if texts else []
    totals = [0.0] * len(shown)
    for i, cosine in zip(where, cosines):
        totals[i] += float(cosine)
    return {row["pair_id"]: totals[i] / len(SIDES) for i, row in enumerate(shown)}


def _mean_ci(values: list[float], n_boot: int, seed: int) -> dict[str, float | None]:
    if not values:
        return {"n_pairs": 0, "mean": None, "lo": None, "hi": None}
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(values) for _ in values) / len(values) for _ in range(n_boot))
    return {"n_pairs": len(values), "mean": round(sum(values) / len(values), 4),
            "lo": round(means[int(0.025 * (n_boot - 1))], 4), "hi": round(means[int(0.975 * (n_boot - 1))], 4)}


def reference_similarity(rows_by_model: dict[str, list[dict]], reference_rows: list[dict],
                         n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per model: similarity to the reference (mean, CI over pairs); and for every two models
    "a - b": the paired difference on the pairs both have, with its CI."""
    reference = {r["pair_id"]: r for r in reference_rows}
    per_pair = {model: _pair_similarities(rows, reference) for model, rows in rows_by_model.items()}
    result: dict[str, Any] = {"models": {m: _mean_ci(list(s.values()), n_boot, seed) for m, s in per_pair.items()}}
    names = list(per_pair)
    result["differences"] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = sorted(set(per_pair[a]) & set(per_pair[b]))
            result["differences"][f"{a} - {b}"] = _mean_ci(
                [per_pair[a][p] - per_pair[b][p] for p in common], n_boot, seed)
    return result
