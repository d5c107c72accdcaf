"""The pipeline's report: what the system did, readable on its own.

First a few test prompts with the personas PI inferred for their chosen and rejected responses,
and the PT-DPO answer under each persona beside the DPO baseline's answer without one; then PI
validity and accuracy, word saliency, and the pairwise win rates and ΔPQ with their CIs. Every
number is read from the stage outputs; nothing here runs a model.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from persona_ray.core import storage
from persona_ray.core.report import write_report
from persona_ray.core.shards import read_shards

if TYPE_CHECKING:
    from persona_ray.pipeline.run import Pipeline

SHOWN_SOURCES = ("gold-chosen", "gold-rejected", "none")


def _examples(pipeline: "Pipeline", count: int) -> list[dict]:
    from persona_ray.dataset.splits import read_split

    headline = pipeline.cfg.comparisons[0]
    answers: dict[str, list[dict]] = {}
    for model_id in (headline.test, headline.base):
        table = read_shards(pipeline.path("generated", model_id, "responses"))
        for row in table.to_pylist() if table is not None else []:
            if row["persona_source"] in SHOWN_SOURCES:
                answers.setdefault(row["row_id"], []).append({**row, "model": model_id})
    rows = sorted(read_split(pipeline.path("retrieved"), "test"), key=lambda r: r["pair_id"])
    examples = []
    for row in rows:
        shown = sorted(answers.get(row["pair_id"], []), key=lambda a: SHOWN_SOURCES.index(a["persona_source"]))
        if len(shown) == len(SHOWN_SOURCES):
            examples.append({**row, "answers": shown})
        if len(examples) == count:
            break
    return examples


def write_showcase(pipeline: "Pipeline") -> str:
    cfg = pipeline.cfg
    infer = storage.read_json(pipeline.path("infer", "manifest.json"))
    pi_eval = storage.read_json(pipeline.path("pi-eval", "pi_accuracy.json"))
    saliency = storage.read_json(pipeline.path("pi-eval", "saliency.json"))
    preference = storage.read_json(pipeline.path("pi-eval", "persona_preference.json"))
    judged = storage.read_json(pipeline.path("judged", "pairwise.json"))
    steps = {}
    for name in ("pt-sft", "pt-dpo", "base-sft", "dpo"):
        marker = pipeline.path("runs", name, "metrics.jsonl")
        if os.path.exists(marker):
            history = [json.loads(line) for line in open(marker, encoding="utf-8") if line.strip()]
            steps[name] = max((h.get("step", 0) for h in history), default=0)

    counts = infer["counts"]
    intro = [
        f"Pairs: `{cfg.pairs.input}` — {counts['valid_pairs']} valid pairs, {counts['quarantined']} quarantined. "
        f"PI model and base model: `{cfg.engine.model}`; judge: `{cfg.judge.model}`.",
        "",
        f"PI wrote {counts['persona_records']} personas, {infer['throughput']['valid_pct']} % valid under the persona "
        f"rules (form, content, no protected attributes). Training steps: "
        + ", ".join(f"{name} {n}" for name, n in steps.items()) + ".",
    ]
    notes = [
        f"Judges: {pi_eval['summary']['judge_model']} for PI accuracy "
        f"({pi_eval['summary']['requests']} verdicts, {pi_eval['summary']['unparseable_after_retries']} unparseable) "
        f"and {judged['summary']['judge_model']} for the pairwise comparison "
        f"({judged['summary']['requests']} verdicts, {judged['summary']['unparseable_after_retries']} unparseable).",
        "A 135M-parameter judge is weak: it often prefers a position or a length rather than the better answer, so "
        "these win rates and accuracies measure the pipeline, not the method. The both-orders rule turns a "
        "position-only judge into ties rather than wins.",
        "On a cluster the same command runs the paper's setup: a strong PI model (e.g. Llama-3.1-405B or 70B), "
        "thousands of pairs, full training epochs and Prometheus-2 (7B) as the judge; only the config changes.",
    ]
    return write_report(
        pipeline.path("report"), title="persona-ray: persona inference and persona tailoring, end to end",
        intro=intro, examples=_examples(pipeline, cfg.examples), accuracy=pi_eval["accuracy"],
        preference=next(iter(preference.values()), None), saliency=saliency["saliency"], traits=saliency["traits"],
        pairwise=judged["results"], notes=notes)
