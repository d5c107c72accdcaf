"""Persona quality: PI accuracy, persona preference and persona diagnostics, with a report.

PI accuracy — does the persona explain the choice? A judge model sees the prompt, both responses
and one persona and names the response that user would pick, in both response orders. A persona
is accurate only when the judge picks its own response both times.
Persona preference — is the rejected persona judged as good as the chosen one? The judge sees
both personas of a pair (both orders); disagreeing orders are ties.
Diagnostics — word saliency P(label | word) over chosen vs rejected personas, and top traits.
Statistics without a judge (quality/persona_stats.py) — valid rate, the same persona on both
sides, exemplar copies, distinct personas and, given a reference, similarity to it (MiniLM).

Input: one or more augmented datasets (the output of `persona-ray augment`, or any
.parquet/.jsonl with pair_id, prompt, chosen, rejected, domain, chosen_persona,
rejected_persona), each labelled with the PI model that wrote its personas.
Output folder: verdicts.parquet (every judge request and answer), pi_accuracy.json,
persona_preference.json, saliency.json, persona_stats.json, report.md and PNG plots. With
pi_accuracy and persona_preference both off no judge runs (no engine starts).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from persona_ray.core import storage
from persona_ray.core.schema import SIDES
from persona_ray.core.settings import Settings
from persona_ray.core.tracking import TrackingSettings, flat_metrics, log_job_run, tracking_field
from persona_ray.core.shards import key_of
from persona_ray.dataset.splits import TEST_SPLIT, read_split
from persona_ray.inference.prompt import exemplar_personas
from persona_ray.quality.persona_stats import persona_statistics, reference_similarity
from persona_ray.quality.saliency import top_traits, word_saliency
from persona_ray.engines.asking import ask_judge
from persona_ray.engines.settings import JudgeSettings, SamplingSettings
from persona_ray.quality.accuracy import (
    CHOICES,
    accuracy_requests,
    aggregate_accuracy,
    aggregate_preference,
    parse_choice,
    preference_requests,
    score_persona,
    score_preference,
)
from persona_ray.core.report import write_report

log = logging.getLogger(__name__)
NEEDED = ("pair_id", "prompt", "chosen", "rejected", "chosen_persona", "rejected_persona")


class PIEvalConfig(Settings):
    """PI accuracy (both orders), persona preference and word saliency, with a Markdown report."""

    data: dict[str, str] = Field(description="PI model label -> augmented folder or .parquet/.jsonl file")
    split: str = Field(TEST_SPLIT, description="which split of an augmented folder to judge")
    output: str = Field(description="a local folder: verdicts, JSON results, report.md and its plots")
    judge: JudgeSettings = JudgeSettings(sampling=SamplingSettings(max_tokens=8, stop=["\n"]))
    pi_accuracy: bool = Field(True, description="judge PI accuracy: does the judge, given a persona, pick its own response")
    persona_preference: bool = Field(True, description="also judge which of a pair's two personas fits better")
    reference: str | None = Field(None, description="hand-written (or teacher) personas of the same pairs, "
                                  ".jsonl/.parquet or augmented folder with pair_id (or id), chosen_persona, "
                                  "rejected_persona: each PI model's similarity to them (MiniLM), with CIs")
    exemplars: str | None = Field(None, description="PI exemplar YAML whose personas count as copied when a "
                                  "persona repeats one (the bundled exemplars when unset)")
    limit: int | None = Field(None, gt=0, description="judge only the first N pairs of each dataset (by pair id)")
    saliency_min_count: int = Field(5, gt=0, description="word saliency: least personas a word must occur in")
    saliency_top_k: int = Field(15, gt=0, description="word saliency: words listed per side")
    saliency_method: Literal["log_odds", "p_label"] = Field(
        "log_odds", description="word saliency ranking: log_odds (weighted log-odds z, frequency-aware) or p_label "
                                "(the paper's class-balanced P(label | word))")
    tracking: TrackingSettings = tracking_field()


def load_rows(path: str, split: str, limit: int | None) -> list[dict]:
    """Augmented rows of one split (an augmented folder, or a .parquet/.jsonl file), sorted by pair id."""
    rows = read_split(path, split)
    for i, row in enumerate(rows):
        if "_error" in row:
            raise ValueError(f"{path} row {i}: {row['_error']}")
        missing = [f for f in NEEDED if not isinstance(row.get(f), str) or not row[f].strip()]
        if missing:
            raise ValueError(f"{path} row {i} ({row.get('pair_id')}): missing or empty {missing}")
        row.setdefault("domain", "unknown")
    rows.sort(key=lambda r: r["pair_id"])
    return rows[:limit] if limit else rows


def _all_rows(path: str, columns: list[str] | None = None) -> list[dict]:
    """Every row of a .jsonl/.parquet file or of an augmented folder (all splits; `columns` of Parquet)."""
    if storage.is_dir(path):
        files = [f for f in storage.list_files(path, suffixes=(".parquet",)) if "/hf/" not in f]
        return [r for f in files for r in storage.read_parquet(f, columns=columns).to_pylist()]
    if path.endswith(".parquet"):
        return storage.read_parquet(path, columns=columns).to_pylist()
    return [json.loads(line) for line in storage.read_bytes(path).decode().splitlines() if line.strip()]


def load_personas_for_report(path: str) -> tuple[list[str], list[str]]:
    """Chosen and rejected personas from a .jsonl/.parquet file or an augmented folder (all splits)."""
    rows = _all_rows(path, ["chosen_persona", "rejected_persona"])
    pick = [(r.get("chosen_persona"), r.get("rejected_persona")) for r in rows]
    return ([c for c, _ in pick if isinstance(c, str) and c], [x for _, x in pick if isinstance(x, str) and x])


def load_reference(path: str) -> list[dict]:
    """Reference persona rows {pair_id, chosen_persona, rejected_persona} from a file or a folder (all splits)."""
    rows = _all_rows(path)
    for i, row in enumerate(rows):
        row.setdefault("pair_id", row.get("id"))
        bad = [f for f in ("pair_id", "chosen_persona", "rejected_persona")
               if not isinstance(row.get(f), str) or not row[f].strip()]
        if bad:
            raise ValueError(f"reference {path} row {i}: missing or empty {bad}")
    return rows


def _pairs_kept(path: str) -> dict[str, int] | None:
    """From an augmented folder's manifest: pairs kept with two valid personas, and pairs left out."""
    manifest = storage.join(path, "augment_manifest.json")
    if not storage.is_dir(path) or not storage.exists(manifest):
        return None
    counts = storage.read_json(manifest)["counts"]
    return {"augmented_pairs": counts["augmented_pairs"], "excluded_invalid_persona": counts["excluded_invalid_persona"],
            "pairs_without_personas": counts["pairs_without_personas"]}


def judge_free_statistics(cfg: PIEvalConfig, rows_by_model: dict[str, list[dict]]) -> dict[str, Any]:
    """persona_stats for every PI model (+ the augment manifest's pair counts), and the similarity
    to the reference when one is given."""
    exemplars = exemplar_personas(cfg.exemplars)
    stats = {label: {**persona_statistics(rows, exemplars), "augment": _pairs_kept(cfg.data[label])}
             for label, rows in rows_by_model.items()}
    similarity = reference_similarity(rows_by_model, load_reference(cfg.reference)) if cfg.reference else None
    return {"models": stats, "reference_similarity": similarity}


def judge_all(requests: list[dict], judge: JudgeSettings) -> tuple[list[dict], int]:
    """All requests answered ("verdict": 1, 2 or None); unparseable ones re-asked a bounded number of times."""
    guided = list(CHOICES) if judge.guided_decoding and judge.backend == "vllm" else None
    return ask_judge(requests, parse=parse_choice, judge=judge, choice=guided)


def _accuracy_requests(rows_by_model: dict[str, list[dict]]) -> list[dict]:
    requests = []
    for model, rows in rows_by_model.items():
        for row in rows:
            for side in SIDES:
                for req in accuracy_requests(row["pair_id"], row["prompt"], row["chosen"], row["rejected"],
                                             row[f"{side}_persona"], side):
                    requests.append({**req, "pi_model": model, "domain": row["domain"],
                                     "judge_key": key_of("acc", model, req["pair_id"], side, req["order"])})
    return requests


def _accuracy(answered: list[dict]) -> list[dict]:
    verdicts: dict[tuple, dict[str, Any]] = defaultdict(dict)
    meta = {}
    for row in answered:
        key = (row["pi_model"], row["pair_id"], row["side"])
        verdicts[key][row["order"]] = row["verdict"]
        meta[key] = row["domain"]
    scored = [{"model": k[0], "domain": meta[k], "side": k[2],
               **score_persona(v.get("own_first"), v.get("own_second"))} for k, v in sorted(verdicts.items())]
    return aggregate_accuracy(scored)


def _preference_requests(rows_by_model: dict[str, list[dict]]) -> list[dict]:
    requests = []
    for model, rows in rows_by_model.items():
        for row in rows:
            for req in preference_requests(row["pair_id"], row["prompt"], row["chosen_persona"],
                                           row["rejected_persona"]):
                requests.append({**req, "pi_model": model,
                                 "judge_key": key_of("pref", model, req["pair_id"], req["order"])})
    return requests


def _preference(answered: list[dict]) -> dict[str, dict]:
    verdicts: dict[tuple, dict[str, Any]] = defaultdict(dict)
    for row in answered:
        verdicts[(row["pi_model"], row["pair_id"])][row["order"]] = row["verdict"]
    outcomes: dict[str, list[str]] = defaultdict(list)
    for (model, _), v in sorted(verdicts.items()):
        outcomes[model].append(score_preference(v.get("chosen_first"), v.get("rejected_first")))
    return {model: aggregate_preference(items) for model, items in outcomes.items()}


def run_pi_eval(cfg: PIEvalConfig) -> dict[str, Any]:
    from persona_ray.core import preflight
    from persona_ray.core.ray_runtime import ensure_ray

    for label, path in cfg.data.items():
        preflight.check_input(f"data.{label}", path)
    if cfg.reference:
        preflight.check_input("reference", cfg.reference)
    preflight.check_output("output", cfg.output)
    judged = cfg.pi_accuracy or cfg.persona_preference
    if judged:
        preflight.check_engine("judge", cfg.judge)
        ensure_ray()
    rows_by_model = {label: load_rows(path, cfg.split, cfg.limit) for label, path in cfg.data.items()}
    statistics = judge_free_statistics(cfg, rows_by_model)
    storage.write_json(statistics, storage.join(cfg.output, "persona_stats.json"))

    # Both questions in one judge run: one engine start (minutes on a cluster) instead of two.
    acc_requests = _accuracy_requests(rows_by_model) if cfg.pi_accuracy else []
    pref_requests = _preference_requests(rows_by_model) if cfg.persona_preference else []
    answers, retried = judge_all(acc_requests + pref_requests, cfg.judge) if judged else ([], 0)
    accuracy = _accuracy(answers[:len(acc_requests)])
    preference = _preference(answers[len(acc_requests):]) if pref_requests else {}

    all_rows = [r for rows in rows_by_model.values() for r in rows]
    saliency = word_saliency([r["chosen_persona"] for r in all_rows], [r["rejected_persona"] for r in all_rows],
                             min_count=cfg.saliency_min_count, top_k=cfg.saliency_top_k, method=cfg.saliency_method)
    traits = top_traits([r[f"{s}_persona"] for r in all_rows for s in SIDES])

    verdict_columns = ("judge_key", "pi_model", "pair_id", "order", "answer", "error")
    storage.write_parquet(pa.Table.from_pylist(
        [{**{c: str(r.get(c) or "") for c in verdict_columns}, "choice": r["verdict"]} for r in answers]),
        storage.join(cfg.output, "verdicts.parquet"))
    unparseable = sum(r["verdict"] is None for r in answers)
    judge = cfg.judge
    summary = {"judge_model": judge.model if judged else None, "engine": judge.backend if judged else None,
               "guided_decoding": judge.guided_decoding if judged else None,
               "requests": len(answers), "unparseable_after_retries": unparseable, "retried": retried,
               "personas": {label: {k: s[k] for k in ("valid_rate", "same_both_sides", "exemplar_copies")}
                            for label, s in statistics["models"].items()}}
    if statistics["reference_similarity"]:
        summary["similarity_to_reference"] = {m: v["mean"] for m, v in
                                              statistics["reference_similarity"]["models"].items()}
    storage.write_json({"summary": summary, "accuracy": accuracy}, storage.join(cfg.output, "pi_accuracy.json"))
    storage.write_json(preference, storage.join(cfg.output, "persona_preference.json"))
    storage.write_json({"saliency": saliency, "traits": traits}, storage.join(cfg.output, "saliency.json"))
    first_preference = next(iter(preference.values()), None)
    notes = [f"Judge: {judge.model} ({judge.backend}, guided={judge.guided_decoding}); "
             f"{len(answers)} verdicts, {unparseable} unparseable after {judge.max_parse_retries} retries."
             if judged else "No judge (pi_accuracy and persona_preference off)."]
    notes += [_statistics_note(label, s) for label, s in statistics["models"].items()]
    if statistics["reference_similarity"]:
        notes += [_similarity_note(statistics["reference_similarity"])]
    if len(preference) > 1:
        notes += [f"Persona preference for {m}: {json.dumps(p)}" for m, p in preference.items()]
    report = write_report(cfg.output, title="Persona quality report", accuracy=accuracy,
                          preference=first_preference, saliency=saliency, traits=traits, notes=notes)
    log.info("PI eval: %d verdicts (%d unparseable), report at %s", len(answers), unparseable, report,
             extra={"stage": "pi-eval", "verdicts": len(answers), "unparseable": unparseable})
    log_job_run(cfg.tracking, "pi-eval", cfg, flat_metrics({
        "requests": len(answers), "unparseable": unparseable,
        "accuracy": {f"{r['model']}/{r['domain']}/{r['side']}": r["accuracy"] for r in accuracy},
        "consistency": {f"{r['model']}/{r['domain']}/{r['side']}": r["consistency"] for r in accuracy}}))
    return {"summary": summary, "accuracy": accuracy, "preference": preference, "statistics": statistics,
            "report": report}


def _statistics_note(label: str, s: dict) -> str:
    return (f"{label}: {s['pairs']} pairs; valid {s['valid_rate']}, same persona both sides {s['same_both_sides']}, "
            f"exemplar copies {s['exemplar_copies']}, distinct {s['distinct_rate']} (persona_stats.json)")


def _similarity_note(similarity: dict) -> str:
    def ci(v: dict) -> str:
        return f"{v['mean']} [{v['lo']}, {v['hi']}] over {v['n_pairs']} pairs"
    parts = [f"{m} {ci(v)}" for m, v in similarity["models"].items()]
    parts += [f"{d}: {ci(v)}" for d, v in similarity["differences"].items()]
    return "Similarity to the reference personas (MiniLM cosine, 95 % CI): " + "; ".join(parts)
