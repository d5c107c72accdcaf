"""`ray job submit` for real: a Ray head started here on 127.0.0.1 (job server, token auth on, as
Ray 2.60 starts it) and the whole pipeline (tiny model) submitted to it twice: first with the `ray
job submit` CLI (the working directory uploaded, a user's runtime env merged with the engine's, JSON
logs), stopped during training as `ray job stop` does; then resubmitted with the Python SDK, which
resumes it (finished stages skipped, not one persona shard written again) and runs it to the report.

Only this head is stopped (every process of its session): `ray stop` would also stop the local
cluster a parallel test worker runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from persona_ray.core.shards import read_shards
from persona_ray.pipeline.run import STAGES
from tests.helpers import REPO, TINY, first_sample_pairs, mlflow_runs
from tests.ray_head import RAY, Head, session_members, start_head, wait_for

# A user's runtime env with a variable the engine also sets (VLLM_CPU_KVCACHE_SPACE): it must not
# conflict with the project's own (Ray refuses same-key env_vars unless told which one wins).
USER_RUNTIME_ENV = {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1", "PERSONA_RAY_LOG_FORMAT": "json"}}


@pytest.fixture(scope="module")
def head():
    # Short: Ray's socket paths under --temp-dir must stay under the OS limit (107 characters).
    work = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))
    started = start_head(work)
    try:
        yield started
    finally:
        started.stop()
        assert session_members(started.process.pid) == [], "processes of the head outlived it"


def submit_cli(head: Head, submission_id: str, runtime_env: dict, *entrypoint: str) -> subprocess.CompletedProcess:
    """`ray job submit --no-wait`: the CLI uploads the working directory and returns once the job is taken."""
    command = [RAY, "job", "submit", "--no-wait", "--address", head.address, "--submission-id", submission_id,
               "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint]
    return subprocess.run(command, cwd=REPO, env=head.env, capture_output=True, text=True, timeout=300)


def persona_files(output: Path) -> dict[str, bytes]:
    return {str(p.relative_to(output)): p.read_bytes() for p in sorted((output / "personas").rglob("*")) if p.is_file()}


def test_pipeline_submitted_with_the_cli_stopped_in_training_then_resubmitted_with_the_sdk(head, tiny_model, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "pipeline.yaml"
    tracking = {"backend": "mlflow", "uri": f"file:{tmp_path / 'mlruns'}"}
    pairs = first_sample_pairs(tmp_path / "pairs.jsonl", 30)  # 30 of the sample pairs: every split still has rows
    config.write_text(yaml.safe_dump({**TINY, "pairs": {"input": str(pairs)}, "output": str(out),
                                      "tracking": tracking}))
    client = head.client()
    entrypoint = (sys.executable, "-m", "persona_ray", "pipeline", "--config", str(config))
    excludes = [".venv/", ".cache/", "outputs/"]

    # First submission, with the `ray` CLI and a user's runtime env: stopped (as `ray job stop`
    # does) once PT-DPO training has started.
    first = submit_cli(head, "pipeline-first", {**USER_RUNTIME_ENV, "excludes": excludes}, *entrypoint)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    deadline = time.time() + 1200
    while not (out / "runs" / "pt-dpo").exists():
        assert client.get_job_status("pipeline-first") in {"PENDING", "RUNNING"}, \
            client.get_job_logs("pipeline-first")[-3000:]
        assert time.time() < deadline, "PT-DPO training never started"
        time.sleep(0.5)
    client.stop_job("pipeline-first")
    assert wait_for(client, "pipeline-first", timeout=120) == "STOPPED"
    assert (out / "stages" / "sft.json").exists() and not (out / "stages" / "dpo.json").exists()
    # The job ran on the head's cluster with the project's code, under the user's runtime env (JSON
    # logs, which name the submission), the engine's own env merged with it.
    logged = [json.loads(line) for line in (out / "pipeline.log").read_text().splitlines() if line.startswith("{")]
    infer_done = [line for line in logged if line.get("stage") == "infer" and "persona_records" in line]
    assert infer_done and infer_done[-1]["job_id"] == "pipeline-first" and infer_done[-1]["persona_records"] == 60
    personas_before = persona_files(out / "infer")

    # Resubmitted with the SDK: every finished stage is skipped, the rest runs to the report.
    head.submit_job(client, submission_id="pipeline-second", entrypoint=" ".join(entrypoint),
                    runtime_env={"working_dir": str(REPO), "excludes": excludes})
    status = wait_for(client, "pipeline-second")
    logs = client.get_job_logs("pipeline-second")
    assert status == "SUCCEEDED", logs[-3000:]
    # Ray's job manager writes its own lines first; what the entrypoint printed follows.
    terminal = logs.split("Running entrypoint for job pipeline-second", 1)[1]
    for stage in ("infer", "pi-student", "augment", "pi-eval", "sft"):
        assert f"{stage:<10} done before, skipped" in terminal
    for stage in STAGES[STAGES.index("dpo"):]:
        assert (out / "stages" / f"{stage}.json").exists(), stage
    # The job's output shows progress lines only; Ray's and vLLM's output went to the log file.
    for word in ("Traceback", "INFO"):
        assert word not in terminal, terminal[max(0, terminal.index(word) - 1500):terminal.index(word) + 1500]
    assert str(out / "pipeline.log") in terminal and (out / "pipeline.log").stat().st_size > 0

    infer = json.loads((out / "infer" / "manifest.json").read_text())["counts"]
    assert infer["persona_records"] == infer["unique_keys"] == 60
    assert persona_files(out / "infer") == personas_before  # not one persona shard written again
    report = (out / "report" / "report.md").read_text()
    for section in ("## What it does: personas and tailored answers", "## Persona accuracy", "## Word saliency",
                    "## Pairwise judgements"):
        assert section in report
    assert "**PT-DPO**, given the chosen persona:" in report and "**DPO**, no persona:" in report
    # The merged PT-DPO and DPO models (a LoRA merged into a merged SFT model) loaded in vLLM and answered.
    for model_id in ("PT-DPO", "DPO"):
        answers = read_shards(str(out / "generated" / model_id / "responses")).to_pylist()
        assert answers and all(a["finish_reason"] in ("stop", "length") and not a["error"] for a in answers), answers
    judged = json.loads((out / "judged" / "pairwise.json").read_text())
    assert {r["persona_source"] for r in judged["results"]} == {"gold-chosen", "gold-rejected", "retr-chosen",
                                                                "retr-rejected"}

    # One tracked experiment run: the pipeline's parent run (kept across the stop and the
    # resubmission) with a child run per stage and per training.
    parent_id = json.loads((out / "tracking.json").read_text())["parent_run_id"]
    runs = mlflow_runs(tracking["uri"])
    (parent,) = [r for r in runs if r.info.run_id == parent_id]
    assert parent.info.run_name == "run" and parent.info.status == "FINISHED"
    assert parent.data.params["output"] == str(out) and parent.data.params["engine.model"] == "tiny"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert len(children) == len(runs) - 1  # nothing outside the pipeline's run
    names = [r.info.run_name for r in children]
    for stage in ("infer", "augment", "pi-eval", "pt-sft", "pt-dpo", "base-sft", "dpo", "index", "retrieve", "judge",
                  "report"):
        assert f"run/{stage}" in names, (stage, names)
    # The stop may come before or after PT-DPO's first run was opened; exactly one finished.
    pt_dpo = [r for r in children if r.info.run_name == "run/pt-dpo"]
    assert 1 <= len(pt_dpo) <= 2 and [r.info.status for r in pt_dpo].count("FINISHED") == 1
    assert {"run/generate-PT-DPO", "run/generate-DPO"} <= set(names)
    (judge,) = [r for r in children if r.info.run_name == "run/judge"]
    assert any(k.endswith("/delta_pq") or k.endswith("/n_rows") for k in judge.data.metrics)
    (infer_run,) = [r for r in children if r.info.run_name == "run/infer"]
    assert infer_run.data.metrics["counts/persona_records"] == 60
