"""Pairwise judging of tailored responses: win rates for quality and personalization, and ΔPQ.

For each comparison (a test model against a base model, e.g. PT-DPO vs DPO) and persona source,
every test row is judged with two rubrics (response quality; personalization = answers the
prompt and fits the user's persona), each in both response orders (pairwise.py). Verdicts are
keyed by test-row id, never by prompt text.

The persona the personalization rubric shows (`judge_persona`):
    given  (the paper's choice, default) the persona the test model was given: the retrieved one
           for retr-* rows, the gold one for gold-*, the fixed one for `system`
    gold   the user's own: the gold persona of the same side for gold-* and retr-* (a retrieved
           persona is only the system's guess at the user), the fixed one for `system`
For `none` (the test model got no persona) both show the user's gold chosen persona.

Data contract
    responses   the output folder of `persona-ray generate` (<model_id>/responses/ shards)
    data        the test rows (augmented folder or file) with pair_id, prompt, chosen_persona,
                rejected_persona
    output      (local folder) verdicts.parquet — every judge request and answer; pairwise.json —
                per (comparison, persona source) counts, win rates, ΔPQ with bootstrap 95 % CIs,
                and the rows that could not be judged; report.md + pairwise_delta_pq.png
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from persona_ray.core import storage
from persona_ray.core.settings import Settings
from persona_ray.core.tracking import TrackingSettings, flat_metrics, log_job_run, tracking_field
from persona_ray.dataset.splits import TEST_SPLIT
from persona_ray.engines.asking import ask_judge
from persona_ray.engines.settings import JudgeSettings, SamplingSettings
from persona_ray.evaluation.domains import JUDGE_TASKS, judge_task, repetitive
from persona_ray.evaluation.generate import PERSONA_SOURCES, load_test_rows
from persona_ray.evaluation.pairwise import (
    RUBRICS,
    aggregate,
    comparison_requests,
    parse_prometheus_verdict,
    parse_verdict,
    result_regex,
    score_comparison,
)
from persona_ray.core.shards import key_of, read_shards

log = logging.getLogger(__name__)
JUDGE_PERSONA_FIELD = {"gold-chosen": "chosen_persona", "retr-chosen": "chosen_persona", "none": "chosen_persona",
                       "gold-rejected": "rejected_persona", "retr-rejected": "rejected_persona"}


class Comparison(Settings):
    """One test model against one baseline."""

    test: str = Field(description="model_id of the model under test (B in the paper's win = B / (A + B))")
    base: str = Field(description="model_id of the baseline")
    persona_sources: list[Literal[PERSONA_SOURCES]] | None = Field(  # type: ignore[valid-type]
        None, description="sources to compare; default: every source the test model has")
    base_source: Literal[PERSONA_SOURCES] | None = Field(  # type: ignore[valid-type]
        None, description="the baseline's source (e.g. none for plain DPO); default: the same source")
    name: str | None = Field(None, description="label in the report; default '<test> vs <base>'")

    @property
    def label(self) -> str:
        return self.name or f"{self.test} vs {self.base}"


class JudgeConfig(Settings):
    """Pairwise judge (both orders, quality and personalization): win rates and ΔPQ with CIs."""

    responses: str = Field(description="the output folder of `persona-ray generate`")
    data: str = Field(description="the test rows (augmented folder or file) with their gold personas")
    split: str = Field(TEST_SPLIT, description="the split of `data` to judge")
    output: str = Field(description="a local folder: verdicts.parquet, pairwise.json, report.md and its plot")
    comparisons: list[Comparison] = Field(min_length=1, description="test/base model pairs to judge")
    judge: JudgeSettings = JudgeSettings(sampling=SamplingSettings(max_tokens=512, stop=[]))
    min_feedback_chars: int = Field(20, ge=0, description="guided decoding: shortest feedback before the verdict")
    max_feedback_chars: int = Field(300, ge=1, description="guided decoding: longest feedback before the verdict")
    n_boot: int = Field(1000, ge=1, description="bootstrap replicates for the 95 % confidence intervals")
    seed: int = Field(0, description="bootstrap seed")
    limit: int | None = Field(None, gt=0, description="judge only the first N test rows by id")
    template: Literal["generic", "prometheus"] = Field(
        "generic", description="judge prompt: generic (this project's relative-grading prompt) or prometheus (the "
                               "prometheus-eval package's official prompt, system prompt, Mistral format and parser: "
                               "the paper's judge, for prometheus-7b-v2.0; needs judge.prompt_format completion)")
    skip_repetitive: bool = Field(True, description="leave out rows where either response has degenerated into "
                                  "repetition (evaluation/domains.repetitive; the paper filtered such HHH outputs)")
    judge_persona: Literal["given", "gold"] = Field(
        "given", description="persona the personalization rubric shows: given (the one the test model got, "
                             "retrieved for retr-* rows; the paper's choice) or gold (the user's own)")
    tracking: TrackingSettings = tracking_field()

    @model_validator(mode="after")
    def _prometheus_is_rendered_here(self):
        if self.template == "prometheus" and self.judge.prompt_format != "completion":
            raise ValueError("judge.prompt_format: the prometheus template is already in the model's conversation "
                             "format; use prompt_format completion")
        return self

    @field_validator("output")
    @classmethod
    def _local_output(cls, output: str) -> str:
        if storage.is_s3(output):
            raise ValueError("must be a local folder (report.md and its plot are written there); copy it to S3 after")
        return output


def _responses(folder: str, model_id: str) -> dict[tuple[str, str], dict]:
    table = read_shards(storage.join(folder, model_id, "responses"))
    if table is None:
        raise FileNotFoundError(f"{folder}/{model_id}/responses: no responses (run `persona-ray generate`)")
    return {(r["row_id"], r["persona_source"]): r for r in table.to_pylist()}


def _judge_persona(row: dict, source: str, test_response: dict, which: str) -> str:
    if source == "system" or (which == "given" and source != "none"):
        return test_response["persona"]
    return row[JUDGE_PERSONA_FIELD[source]]


def judge_instruction(prompt: str, domain: str | None, template: str = "generic") -> str:
    """What the judge is told the task was. Generic: the prompt, after the domain's task where it
    has one (a mnemonic prompt is judged as a request for a keyword mnemonic). Prometheus: the
    domain's task, then "Prompt: <prompt>", as the paper builds it."""
    if template == "prometheus":
        return f"{judge_task(domain)} Prompt: {prompt.strip()}"
    task = JUDGE_TASKS.get(domain or "")
    return f"{task}\n\n{prompt.strip()}" if task else prompt


def build_all_requests(cfg: JudgeConfig, rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(judge requests, rows that cannot be judged with the reason)."""
    requests, skipped = [], []
    cache: dict[str, dict] = {}
    for comp in cfg.comparisons:
        for model_id in (comp.test, comp.base):
            if model_id not in cache:  # each model's shards are read once, however many comparisons use it
                cache[model_id] = _responses(cfg.responses, model_id)
        test, base = cache[comp.test], cache[comp.base]
        sources = comp.persona_sources or sorted({s for _, s in test}, key=PERSONA_SOURCES.index)
        for source in sources:
            for row in rows:
                rid = row["pair_id"]
                t, b = test.get((rid, source)), base.get((rid, comp.base_source or source))
                problem = ("test response missing" if t is None else "base response missing" if b is None
                           else "test generation failed" if t["error"] else "base generation failed" if b["error"]
                           else None)
                if not problem and cfg.skip_repetitive:
                    problem = ("test response repetitive" if repetitive(t["response"]) else
                               "base response repetitive" if repetitive(b["response"]) else None)
                if problem:
                    skipped.append({"comparison": comp.label, "persona_source": source, "row_id": rid,
                                    "reason": problem})
                    continue
                persona = _judge_persona(row, source, t, cfg.judge_persona)
                instruction = judge_instruction(row["prompt"], row.get("domain"), cfg.template)
                for rubric in RUBRICS:
                    for req in comparison_requests(rid, instruction, b["response"], t["response"], persona, rubric,
                                                   cfg.template):
                        key = key_of(comp.label, source, rid, rubric, req["order"])
                        requests.append({**req, "comparison": comp.label, "persona_source": source, "judge_key": key})
    return requests, skipped


def score(answered: list[dict]) -> list[dict]:
    """Both-order verdicts → one outcome per (comparison, source, row, rubric)."""
    verdicts: dict[tuple, dict[str, str | None]] = defaultdict(dict)
    for row in answered:
        verdicts[(row["comparison"], row["persona_source"], row["row_id"], row["rubric"])][row["order"]] = row["verdict"]
    return [{"comparison": c, "persona_source": s, "row_id": r, "rubric": rubric,
             "outcome": score_comparison(v.get("base_first"), v.get("test_first"))}
            for (c, s, r, rubric), v in sorted(verdicts.items())]


def run_judge(cfg: JudgeConfig) -> dict[str, Any]:
    from persona_ray.core import preflight
    from persona_ray.core.ray_runtime import ensure_ray
    from persona_ray.core.report import write_report

    preflight.check_input("responses", cfg.responses)
    preflight.check_input("data", cfg.data)
    preflight.check_output("output", cfg.output)
    preflight.check_engine("judge", cfg.judge)
    rows = load_test_rows(cfg.data, cfg.split, cfg.limit)
    requests, skipped = build_all_requests(cfg, rows)
    ensure_ray()
    judge = cfg.judge
    guided = judge.guided_decoding and judge.backend == "vllm"
    parse = parse_prometheus_verdict if cfg.template == "prometheus" else parse_verdict
    answered, retried = ask_judge(requests, parse=parse, judge=judge,
                                  regex=result_regex(cfg.min_feedback_chars, cfg.max_feedback_chars) if guided else None)
    columns = ("comparison", "persona_source", "row_id", "rubric", "order", "answer", "verdict", "error")
    storage.write_parquet(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in answered],
                                               schema=pa.schema([(c, pa.string()) for c in columns])),
                          storage.join(cfg.output, "verdicts.parquet"))
    results = aggregate(score(answered), n_boot=cfg.n_boot, seed=cfg.seed)
    summary = {"judge_model": judge.model, "engine": judge.backend, "guided_decoding": guided,
               "requests": len(answered), "unparseable_after_retries": sum(r["verdict"] is None for r in answered),
               "retried": retried, "rows_not_judged": len(skipped)}
    storage.write_json({"summary": summary, "results": results, "not_judged": skipped},
                       storage.join(cfg.output, "pairwise.json"))
    notes = [f"Judge: {judge.model} ({judge.backend}, guided={guided}); {len(answered)} verdicts, "
             f"{summary['unparseable_after_retries']} unparseable after {judge.max_parse_retries} retries "
             f"({retried} re-asked); {len(skipped)} (row, source) pairs not judged (see pairwise.json)."]
    report = write_report(cfg.output, title="Tailored responses: pairwise judgement", pairwise=results, notes=notes)
    log.info("judge: %d verdicts (%d unparseable after retries), %d rows not judged; report at %s",
             len(answered), summary["unparseable_after_retries"], len(skipped), report,
             extra={"stage": "judge", "verdicts": len(answered), "not_judged": len(skipped),
                    "unparseable": summary["unparseable_after_retries"],
                    "results": [{k: r.get(k) for k in ("comparison", "persona_source", "n_rows", "p_win", "q_win",
                                                       "delta_pq")} for r in results]})
    log_job_run(cfg.tracking, "judge", cfg, flat_metrics({
        **{k: v for k, v in summary.items() if k != "judge_model"},
        **{f"{r['comparison']}/{r['persona_source']}": {k: r.get(k) for k in ("p_win", "q_win", "delta_pq", "n_rows")}
           for r in results}}))
    return {"summary": summary, "results": results, "report": report}
