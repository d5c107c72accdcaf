"""Persona inference under faults: fail fast and say it in one line; lose nothing when the object
store stalls. (Hostile rows in the input, and a kill at a random moment: test_infer.py.)

Real components throughout: the `persona-ray infer` command in its own process, joined to this
test worker's Ray cluster as a job joins a running cluster (vLLM on CPU, the tiny model), and the
tests' moto S3 server in its own process, paused with SIGSTOP from outside the job.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.helpers import REPO, SAMPLE_PAIRS, free_port, infer_command, kill_group, local_env, write_yaml

ENGINE = {"model": "tiny", "guided_decoding": True, "sampling": {"max_tokens": 96}, "vllm": {"batch_size": 8}}
SETTINGS = {"engine": ENGINE, "max_attribute_chars": 30, "max_preference_chars": 50}


# ---------------------------------------------------------------------------------------------
# Mistakes found before any engine starts: one line, exit 2, in seconds.

def _one_line_failure(command: list[str], field: str, env: dict, limit_s: float = 15.0) -> str:
    start = time.monotonic()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), result.stderr[-2000:]
    assert "Fix:" in lines[0] and "traceback: " in lines[0]
    assert elapsed <= limit_s, f"{elapsed:.1f} s"
    return lines[0]


@pytest.mark.slow  # seven `persona-ray infer` processes
def test_bad_input_output_k_shot_and_endpoints_fail_in_one_line_before_any_engine(tmp_path):
    good = {"pairs": {"input": str(SAMPLE_PAIRS)}, "output": str(tmp_path / "out"), **SETTINGS}
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    env = local_env()
    cases = [
        ({**good, "pairs": {"input": str(tmp_path / "missing.jsonl")}}, "pairs.input", "does not exist", env),
        ({**good, "output": str(a_file)}, "output", "is a file, not a folder", env),
        ({**good, "output": str(a_file / "below")}, "output", "cannot be made", env),
        ({**good, "k_shot": 99}, "k_shot", "has only 5 exemplars", env),
        ({**good, "engine": {"backend": "openai", "model": "org/hosted-model",
                             "openai": {"base_url": f"http://127.0.0.1:{free_port()}/v1"}}},
         "engine.openai.base_url", "cannot reach", env),
        ({**good, "contrast": {"samples": 2}, "engine": {"backend": "openai", "model": "org/hosted-model"}},
         "contrast", "engine.backend vllm", env),
        ({**good, "output": "s3://bucket/out"}, "output", "cannot write to s3://bucket/out",
         {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_ACCESS_KEY_ID": "x",
          "AWS_SECRET_ACCESS_KEY": "y", "PERSONA_RAY_S3_TIMEOUT_S": "2"}),
    ]
    for i, (cfg, field, text, case_env) in enumerate(cases):
        line = _one_line_failure(infer_command(write_yaml(tmp_path / f"case-{i}.yaml", **cfg)), field, case_env)
        assert text in line, line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------------------------------------
# A stalled object store: a pause shorter than the retry window costs time, a longer one ends the
# job in one line with nothing marked complete, and a rerun finishes the work.

def _shards_on_s3(client, bucket: str) -> int:
    listing = client.list_objects_v2(Bucket=bucket, Prefix="out/personas/")
    return sum(1 for item in listing.get("Contents", []) if item["Key"].endswith(".parquet"))


def _run_with_pause(command, env, server, client, bucket: str, pause_s: float,
                    after_shards: int = 0) -> subprocess.CompletedProcess:
    """Run the job; once it has written a shard (more than `after_shards` on S3), pause the
    server for pause_s seconds while the job is still writing (or until the job has ended)."""
    job = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        while job.poll() is None and _shards_on_s3(client, bucket) <= after_shards:
            time.sleep(0.2)
        if job.poll() is not None:
            out, err = job.communicate()
            raise AssertionError(f"the job ended (rc {job.returncode}) before it wrote a shard: {err[-3000:]}")
        server.pause()
        paused_until = time.time() + pause_s
        while time.time() < paused_until and job.poll() is None:  # a job that gave up ends the pause
            time.sleep(0.2)
        server.resume()
        out, err = job.communicate(timeout=1200)
    finally:
        server.resume()
        kill_group(job)
    return subprocess.CompletedProcess(command, job.returncode, out, err)


@pytest.mark.slow
def test_s3_pause_beyond_the_retry_window_fails_in_one_line_and_a_rerun_survives_a_short_one(s3_server, ray_local,
                                                                                                s3_bucket, tmp_path):
    import boto3

    client = boto3.client("s3")
    # The jobs join this worker's Ray cluster, whose workers reach the same S3 server; the job's
    # driver writes the shards, with a short retry window.
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "PERSONA_RAY_S3_RETRY_S": "6", "PERSONA_RAY_S3_TIMEOUT_S": "2"}
    output = f"s3://{s3_bucket}/out"
    config = write_yaml(tmp_path / "infer.yaml", pairs={"input": str(SAMPLE_PAIRS)}, output=output,
                          **{**SETTINGS, "shard_size": 1000, "commit_every_s": 0.5})
    command = infer_command(config)

    long_pause = _run_with_pause(command, env, s3_server, client, s3_bucket, pause_s=25)
    last = long_pause.stderr.strip().splitlines()[-1]
    assert long_pause.returncode == 2, long_pause.stderr[-3000:]
    assert last.startswith(f"error: could not write {output}/personas/part-") and "Fix:" in last, last
    # Our traceback went to the log file, not the terminal (engine workers torn down mid-request
    # may still print their own shutdown noise)
    assert "persona_ray/core/storage.py" not in long_pause.stderr and "raise StorageError" not in long_pause.stderr
    names = [item["Key"] for item in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert "out/manifest.json" not in names  # nothing marked complete
    kept = _shards_on_s3(client, s3_bucket)

    short_pause = _run_with_pause(command, env, s3_server, client, s3_bucket, pause_s=3, after_shards=kept)
    assert short_pause.returncode == 0, short_pause.stderr[-3000:]
    manifest = json.loads(client.get_object(Bucket=s3_bucket, Key="out/manifest.json")["Body"].read())
    assert manifest["counts"]["unique_keys"] == manifest["counts"]["persona_records"] == 120
    assert manifest["counts"]["resumed_records"] > 0 and kept > 0  # the first run's shards were kept and reused
