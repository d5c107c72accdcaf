"""Ask a judge model many questions and parse its answers, re-asking the unparseable ones.

Used by every LLM judge (PI accuracy, pairwise response judging). Each request is a row with a
"prompt" and a unique `judge_key`; answered rows come back in request order with
    answer    the judge's text ("" on engine error)
    verdict   parse(answer), or None when it could not be parsed (or the engine failed)
Unparseable answers are re-asked up to `judge.max_parse_retries` times with sampling (temperature
`judge.retry_temperature`, a new seed each round), so a greedy judge stuck on one bad answer gets
another chance; what is still unparseable stays None and the caller counts it.
"""

from __future__ import annotations

from typing import Any, Callable

import ray.data

from persona_ray.core import progress
from persona_ray.engines.settings import JudgeSettings


def ask_judge(requests: list[dict], *, parse: Callable[[str], Any], judge: JudgeSettings, regex: str | None = None,
              choice: list[str] | None = None) -> tuple[list[dict], int]:
    """(answered requests in request order, number of re-asked requests)."""
    if not requests:
        return [], 0
    keys = [r["judge_key"] for r in requests]
    if len(set(keys)) != len(keys):
        raise ValueError("judge requests need unique judge_key values")

    def ask(rows: list[dict], sampling) -> list[dict]:
        out = []
        for row in judge.generate(ray.data.from_items(rows), regex=regex, choice=choice, sampling=sampling).iter_rows():
            row = dict(row)
            row["answer"] = row.get("generated_text") or ""
            row["verdict"] = parse(row["answer"]) if not row.get("error") else None
            out.append(row)
            progress.update(len(out), len(rows), "verdicts")
        return out

    answered = {r["judge_key"]: r for r in ask(requests, judge.sampling)}
    retried = 0
    for attempt in range(1, judge.max_parse_retries + 1):
        pending = [r for r in requests if answered[r["judge_key"]]["verdict"] is None]
        if not pending:
            break
        retried += len(pending)
        resample = judge.sampling.model_copy(update={"temperature": judge.retry_temperature, "seed": attempt})
        for row in ask(pending, resample):
            answered[row["judge_key"]] = row
    return [answered[key] for key in keys], retried
