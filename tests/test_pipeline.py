"""The pipeline command: stage planning, config checks, the progress line, and one end-to-end run on
the tiny model that is killed during training and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from persona_ray.pipeline.display import stage_line
from persona_ray.pipeline.run import STAGES, PipelineConfig, plan
from tests.conftest import REPO, SAMPLE_PAIRS

TRAIN = {"max_steps": 2, "per_device_batch_size": 2, "max_length": 256, "evaluate": False, "save_steps": 2}
TINY = {
    "pairs": {"input": str(SAMPLE_PAIRS)},
    # A random model: sampling (seeded) gives varied words where greedy decoding repeats one token,
    # which the persona rules refuse as degenerate.
    "engine": {"model": "tiny", "sampling": {"max_tokens": 192, "temperature": 1.0, "seed": 0},
               "vllm": {"batch_size": 32}},
    "judge": {"model": "tiny"},
    "infer": {"k_shot": 1, "max_attribute_chars": 60, "max_preference_chars": 100},
    "sft": TRAIN, "dpo": TRAIN,
    "generation": {"max_tokens": 16}, "judge_sampling": {"max_tokens": 64}, "max_feedback_chars": 40,
}


def test_plan_runs_what_is_not_done_or_what_was_asked():
    done = {"infer", "augment", "pi-eval"}
    assert plan(lambda s: s in done) == list(STAGES[3:])
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


@pytest.mark.slow
def test_pipeline_end_to_end_killed_in_training_then_resumed(tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({**TINY, "output": str(out)}))
    command = [sys.executable, "-m", "persona_ray", "pipeline", "--config", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}

    # First run: killed (the whole process group: driver, Ray, engines) once PT-DPO training started.
    first = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 1200
    while not (out / "runs" / "pt-dpo").exists():
        assert first.poll() is None, first.stdout.read()
        assert time.time() < deadline, "PT-DPO training never started"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    assert (out / "stages" / "sft.json").exists() and not (out / "stages" / "dpo.json").exists()

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    terminal = second.stdout + second.stderr
    assert second.returncode == 0, terminal[-3000:]
    for stage in ("infer", "augment", "pi-eval", "sft"):
        assert f"{stage:<10} done before, skipped" in terminal
    for stage in STAGES[4:]:
        assert (out / "stages" / f"{stage}.json").exists(), stage
    # The terminal shows progress lines only; Ray's and vLLM's output went to the log file.
    assert "Traceback" not in terminal and "INFO" not in terminal
    assert str(out / "pipeline.log") in terminal and (out / "pipeline.log").stat().st_size > 0

    infer = json.loads((out / "infer" / "manifest.json").read_text())["counts"]
    assert infer["persona_records"] == infer["unique_keys"] == 120
    report = (out / "report" / "report.md").read_text()
    for section in ("## What it does: personas and tailored answers", "## Persona accuracy", "## Word saliency",
                    "## Pairwise judgements"):
        assert section in report
    assert "**PT-DPO**, given the chosen persona:" in report and "**DPO**, no persona:" in report
    judged = json.loads((out / "judged" / "pairwise.json").read_text())
    assert {r["persona_source"] for r in judged["results"]} == {"gold-chosen", "gold-rejected", "retr-chosen",
                                                                "retr-rejected"}
