"""`ray job submit` for real: a Ray head started here on 127.0.0.1 (job server, token auth on, as
Ray 2.60 starts it), persona inference submitted with the `ray job submit` CLI and the working
directory uploaded, resubmitted (it resumes and writes nothing twice); the whole pipeline (tiny
model) submitted with the Python SDK, stopped during training and resubmitted (it resumes); then
the head stopped.

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


def submit_cli(head: Head, submission_id: str, *entrypoint: str) -> subprocess.CompletedProcess:
    command = [RAY, "job", "submit", "--address", head.address, "--submission-id", submission_id,
               "--working-dir", str(REPO), "--runtime-env-json", json.dumps(USER_RUNTIME_ENV), "--", *entrypoint]
    return subprocess.run(command, cwd=REPO, env=head.env, capture_output=True, text=True, timeout=900)


def persona_files(output: Path) -> dict[str, bytes]:
    return {str(p.relative_to(output)): p.read_bytes() for p in sorted((output / "personas").rglob("*")) if p.is_file()}


def test_pi_job_through_the_ray_cli_then_resubmitted_resumes_and_writes_nothing_twice(head, tiny_model, tmp_path):
    output = tmp_path / "pi"
    config = yaml.safe_load((REPO / "cluster" / "jobs" / "local.yaml").read_text())
    config.update(output=str(output), k_shot=1)
    # 24 of the sample pairs: the job server is under test, not PI
    config["pairs"]["input"] = str(first_sample_pairs(tmp_path / "pairs.jsonl", 24))
    config["engine"]["sampling"] = {"max_tokens": 192, "temperature": 1.0, "seed": 0}
    config_file = tmp_path / "infer.yaml"
    config_file.write_text(yaml.safe_dump(config))
    entrypoint = (sys.executable, "jobs/infer.py", "--config", str(config_file))

    first = submit_cli(head, "pi-first", *entrypoint)
    client = head.client()
    assert client.get_job_status("pi-first") == "SUCCEEDED", first.stdout[-3000:] + first.stderr[-2000:]
    counts = json.loads((output / "manifest.json").read_text())["counts"]
    assert counts["persona_records"] == counts["unique_keys"] == counts["expected_records"] == 48
    assert counts["written_this_run"] == 48 and counts["resumed_records"] == 0
    # The job ran on the head's cluster, under the user's runtime env (JSON logs), with the project's code.
    logs = client.get_job_logs("pi-first")
    summary = [json.loads(line) for line in logs.splitlines() if line.startswith("{") and '"stage": "infer"' in line]
    assert summary and summary[-1]["job_id"] == "pi-first" and summary[-1]["persona_records"] == 48
    before = persona_files(output)

    second = submit_cli(head, "pi-second", *entrypoint)
    assert client.get_job_status("pi-second") == "SUCCEEDED", second.stdout[-3000:] + second.stderr[-2000:]
    counts = json.loads((output / "manifest.json").read_text())["counts"]
    assert counts["resumed_records"] == 48 and counts["written_this_run"] == 0
    assert counts["persona_records"] == counts["unique_keys"] == 48
    assert persona_files(output) == before  # not one shard written again


def test_pipeline_submitted_with_the_sdk_stopped_in_training_then_resubmitted(head, tiny_model, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "pipeline.yaml"
    tracking = {"backend": "mlflow", "uri": f"file:{tmp_path / 'mlruns'}"}
    pairs = first_sample_pairs(tmp_path / "pairs.jsonl", 30)  # 30 of the sample pairs: every split still has rows
    config.write_text(yaml.safe_dump({**TINY, "pairs": {"input": str(pairs)}, "output": str(out),
                                      "tracking": tracking}))
    client = head.client()
    job = {"entrypoint": f"{sys.executable} -m persona_ray pipeline --config {config}",
           "runtime_env": {"working_dir": str(REPO), "excludes": [".venv/", ".cache/", "outputs/"]}}

    # First submission: stopped (as `ray job stop` does) once PT-DPO training has started.
    head.submit_job(client, submission_id="pipeline-first", **job)
    deadline = time.time() + 1200
    while not (out / "runs" / "pt-dpo").exists():
        assert client.get_job_status("pipeline-first") in {"PENDING", "RUNNING"}, \
            client.get_job_logs("pipeline-first")[-3000:]
        assert time.time() < deadline, "PT-DPO training never started"
        time.sleep(0.5)
    client.stop_job("pipeline-first")
    assert wait_for(client, "pipeline-first", timeout=120) == "STOPPED"
    assert (out / "stages" / "sft.json").exists() and not (out / "stages" / "dpo.json").exists()

    # Resubmitted: every finished stage is skipped, the rest runs to the report.
    head.submit_job(client, submission_id="pipeline-second", **job)
    status = wait_for(client, "pipeline-second")
    logs = client.get_job_logs("pipeline-second")
    assert status == "SUCCEEDED", logs[-3000:]
    # Ray's job manager writes its own lines first; what the entrypoint printed follows.
    terminal = logs.split("Running entrypoint for job pipeline-second", 1)[1]
    for stage in ("infer", "augment", "pi-eval", "sft"):
        assert f"{stage:<10} done before, skipped" in terminal
    for stage in STAGES[4:]:
        assert (out / "stages" / f"{stage}.json").exists(), stage
    # The job's output shows progress lines only; Ray's and vLLM's output went to the log file.
    for word in ("Traceback", "INFO"):
        assert word not in terminal, terminal[max(0, terminal.index(word) - 1500):terminal.index(word) + 1500]
    assert str(out / "pipeline.log") in terminal and (out / "pipeline.log").stat().st_size > 0

    infer = json.loads((out / "infer" / "manifest.json").read_text())["counts"]
    assert infer["persona_records"] == infer["unique_keys"] == 60
    report = (out / "report" / "report.md").read_text()
    for section in ("## What it does: personas and tailored answers", "## Persona accuracy", "## Word saliency",
                    "## Pairwise judgements"):
        assert section in report
    assert "**PT-DPO**, given the chosen persona:" in report and "**DPO**, no persona:" in report
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
