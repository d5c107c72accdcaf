"""The pipeline command: stage planning, config checks, the progress line. Its end-to-end run (tiny
model, stopped during training and resubmitted) is in test_job_submit.py: it runs as a Ray job."""

from __future__ import annotations

import pytest

from persona_ray.core.terminal import stage_line
from persona_ray.pipeline.run import STAGES, PipelineConfig, plan

def test_plan_runs_what_is_not_done_or_what_was_asked():
    done = {"infer", "augment", "pi-eval"}
    assert plan(lambda s: s in done) == [s for s in STAGES if s not in done]
    assert plan(lambda s: True) == []
    assert plan(lambda s: True, start="judge") == ["judge", "report"]
    assert plan(lambda s: False, only="index") == ["index"]
    with pytest.raises(ValueError, match="--from: unknown stage 'trian'"):
        plan(lambda s: False, start="trian")


def test_config_is_checked_before_anything_runs():
    base = {"pairs": {"input": "p.jsonl"}, "output": "o"}
    assert PipelineConfig(**base).engine.model == "tiny"
    for bad, message in [({"training_type": "none"}, "training_type"),
                         ({"sft": {"max_stepz": 3}}, "max_stepz"),
                         ({"infer": {"k_shot": -1}}, "k_shot"),
                         ({"output": "s3://bucket/run"}, "local folder")]:
        with pytest.raises(ValueError, match=message):
            PipelineConfig(**{**base, **bad})


def test_progress_line_shows_counts_rate_and_eta():
    line = stage_line(4, 11, "sft", started=100.0, state={"done": 10, "total": 40, "unit": "steps", "time": 110.0},
                      now=120.0)
    assert line.startswith("[ 4/11] sft ")
    assert "10/40 steps" in line and "0.50/s" in line and "ETA 1m00s" in line and "(20s)" in line
    # Numbers written before this stage started belong to the last stage: not shown.
    stale = stage_line(5, 11, "dpo", started=200.0, state={"done": 40, "total": 40, "unit": "steps", "time": 150.0},
                       now=210.0)
    assert "running" in stale and "40/40" not in stale
