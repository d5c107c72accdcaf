"""Persona inference under faults and hostile input: lose nothing, fail fast, say it in one line.

Real components throughout: the `persona-ray infer` command in its own process (its own local Ray,
vLLM on CPU, the tiny model), a moto S3 server in its own process so it can be paused with
SIGSTOP, and kills from outside the job (never a hook inside it).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from persona_ray.core import storage
from persona_ray.core.shards import read_shards
from persona_ray.inference.infer import InferConfig, run_infer
from persona_ray.testing.hostile import HOSTILE, good_ids, hostile_file_bytes
from tests.helpers import REPO, SAMPLE_PAIRS, committed_rows, free_port, many_pairs
from tests.ray_head import RAY_START_TIMEOUT, pause_before_retry

ENGINE = {"model": "tiny", "guided_decoding": True, "sampling": {"max_tokens": 96}, "vllm": {"batch_size": 8}}
SETTINGS = {"engine": ENGINE, "max_attribute_chars": 30, "max_preference_chars": 50}
FIELDS = ("persona", "raw_text", "valid", "reason")


def cli(config: Path) -> list[str]:
    return [sys.executable, "-m", "persona_ray.cli", "infer", "--config", str(config)]


def write_config(path: Path, **cfg) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def local_env() -> dict:
    """This environment less the test S3 server's settings (the job under test gets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


def records_by_key(output: str) -> dict[tuple[str, str], dict]:
    rows = read_shards(storage.join(output, "personas")).to_pylist()
    keys = [(r["pair_id"], r["side"]) for r in rows]
    assert len(keys) == len(set(keys)), "a (pair_id, side) appears twice"
    return {key: {f: row[f] for f in FIELDS} for key, row in zip(keys, rows)}


def descendants(process: subprocess.Popen) -> list:
    """Every process the job started so far (psutil), wherever its session or group."""
    try:
        return psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_group(process: subprocess.Popen, started: list = ()) -> None:
    """The job and everything it started (its local Ray cluster, the engine): its process group,
    the processes it has started now, and `started` (its descendants seen earlier: a vLLM engine
    process outlives its Ray worker, under init, and would keep its memory for the rest of the run)."""
    leftovers = [*started, *descendants(process)]
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for leftover in leftovers:
        try:
            leftover.kill()
        except psutil.Error:
            pass
    process.wait(timeout=60)


# ---------------------------------------------------------------------------------------------
# Hostile input: every bad row quarantined with its field, every good row kept.

@pytest.mark.slow
def test_hostile_rows_are_quarantined_with_their_field_and_good_rows_all_kept(ray_local, tmp_path):
    source = tmp_path / "hostile.jsonl"
    source.write_bytes(hostile_file_bytes())
    cfg = InferConfig(pairs={"input": str(source)}, output=str(tmp_path / "out"), **SETTINGS)
    manifest = run_infer(cfg)

    quarantine = read_shards(str(tmp_path / "out" / "quarantine")).to_pylist()
    same_id = {json.loads(line)["id"]: {line} for line in SAMPLE_PAIRS.read_text().splitlines() if line.strip()}
    assert len(quarantine) == len(HOSTILE) == manifest["counts"]["quarantined"], quarantine
    for line, row_id, reason in HOSTILE:
        matches = [q for q in quarantine if reason in q["reason"] and (row_id is None or q["row_id"] == row_id)]
        assert len(matches) == 1, (row_id, reason, [q["reason"] for q in quarantine])
        # `raw` is the line as written (undecodable bytes shown as \xNN), never a wrapper; of two rows
        # sharing an id, either may be the one quarantined
        as_written = {line.decode("utf-8", errors="backslashreplace")} | same_id.get(row_id, set())
        assert matches[0]["raw"] in as_written, matches[0]["raw"][:200]
    assert "hostile.jsonl:" in next(q for q in quarantine if "UTF-8" in q["reason"])["reason"]  # file:line

    personas = records_by_key(cfg.output)
    assert {pair_id for pair_id, _ in personas} == good_ids()  # CRLF and U+2028 rows included
    assert manifest["counts"]["persona_records"] == 2 * len(good_ids())


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


@pytest.mark.slow  # six `persona-ray infer` processes
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
        ({**good, "output": "s3://bucket/out"}, "output", "cannot write to s3://bucket/out",
         {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_ACCESS_KEY_ID": "x",
          "AWS_SECRET_ACCESS_KEY": "y", "PERSONA_RAY_S3_TIMEOUT_S": "2"}),
    ]
    for i, (cfg, field, text, case_env) in enumerate(cases):
        line = _one_line_failure(cli(write_config(tmp_path / f"case-{i}.yaml", **cfg)), field, case_env)
        assert text in line, line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------------------------------------
# A kill at a random moment loses at most the rows in flight.

@pytest.mark.slow
def test_kill_at_a_random_moment_then_rerun_equals_an_uninterrupted_run(ray_local, tmp_path):
    pairs = 40  # 10 commits of 8 records: a kill point between 30 % and 80 % has commits on both sides
    source = tmp_path / "pairs.jsonl"
    many_pairs(source, pairs)
    # Commits by time, not by count: every 0.2 s, with one batch of 8 records in flight, so a commit
    # holds a batch or two and the kill lands between commits (at 1 s with two batches in flight, the
    # tiny model's last commit could take the count from below the kill point to all of them).
    settings = {**SETTINGS, "shard_size": 1000, "commit_every_s": 0.2,
                "engine": {**ENGINE, "vllm": {"batch_size": 8, "max_concurrent_batches": 1}}}
    reference = InferConfig(pairs={"input": str(source)}, output=str(tmp_path / "reference"), **settings)
    run_infer(reference)  # uninterrupted, in this process

    output = tmp_path / "out"
    config = write_config(tmp_path / "infer.yaml", pairs={"input": str(source)}, output=str(output), **settings)
    # The job and its rerun join this worker's Ray cluster, as jobs join a running cluster (the
    # driver is what is killed; Ray then ends its actors): no local Ray to start, twice.
    env = {**local_env(), "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    seed = int(time.time())
    target = random.Random(seed).uniform(0.3, 0.8)
    print(f"kill when {target:.0%} of the records are committed (seed {seed})")
    job = subprocess.Popen(cli(config), cwd=REPO, env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: list[int] = []
    started: list = []
    try:
        while job.poll() is None:
            rows = committed_rows(output / "personas")
            if not seen or rows != seen[-1]:
                seen.append(rows)
            if rows >= target * 2 * pairs:
                break
            time.sleep(0.1)
        finished_before_kill = job.poll() is not None
        started = descendants(job)
        if not finished_before_kill:
            os.kill(job.pid, signal.SIGKILL)  # the driver only, as `kill -9 <pid>` would: Ray helpers may linger
            job.wait(timeout=60)
        committed = committed_rows(output / "personas")
        marked_complete = (output / "manifest.json").exists()
        # A hang guard, not a speed limit: in CI the rerun shares two cores with a second test worker.
        rerun = subprocess.run(cli(config), cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    finally:
        kill_group(job, started)  # now clean up the killed job's leftovers
    assert not finished_before_kill, f"the job finished before {target:.0%} was committed; commits seen: {seen}"
    print(f"killed with {committed}/{2 * pairs} records committed; commits seen: {seen}")
    assert 0.3 * 2 * pairs <= committed < 2 * pairs, f"commits seen: {seen}"
    assert len([n for n in seen if 0 < n < 2 * pairs]) >= 2  # results arrived in steps, not all at the end
    assert not marked_complete
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["counts"]["resumed_records"] == committed
    assert manifest["counts"]["written_this_run"] == 2 * pairs - committed
    assert records_by_key(str(output)) == records_by_key(reference.output)


# ---------------------------------------------------------------------------------------------
# A stalled object store: a pause shorter than the retry window costs time, a longer one ends the
# job in one line with nothing marked complete, and a rerun finishes the work.

@pytest.fixture
def pausable_s3():
    """A moto S3 server in its own process (so SIGSTOP pauses it, not this test)."""
    import boto3

    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", "import sys, time; from moto.server import ThreadedMotoServer; "
                               f"ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False).start(); "
                               "time.sleep(3600)"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    for _ in range(100):
        try:
            client.create_bucket(Bucket="pause-test")
            break
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(0.1)
    yield server, env, client
    os.kill(server.pid, signal.SIGCONT)
    server.kill()
    server.wait()


def _shards_on_s3(client) -> int:
    listing = client.list_objects_v2(Bucket="pause-test", Prefix="out/personas/")
    return sum(1 for item in listing.get("Contents", []) if item["Key"].endswith(".parquet"))


def _run_with_pause(command, env, server, client, pause_s: float, after_shards: int = 0,
                    attempts: int = 3) -> subprocess.CompletedProcess:
    """Run the job; once it has written a shard (more than `after_shards` on S3), pause the
    server for pause_s seconds while the job is still writing (or until the job has ended). A job
    whose local Ray did not start (RAY_START_TIMEOUT, before any work) is run again, after
    `pause_before_retry`."""
    for attempt in range(1, attempts + 1):
        job = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        try:
            while job.poll() is None and _shards_on_s3(client) <= after_shards:
                time.sleep(0.2)
            if job.poll() is not None:
                out, err = job.communicate()
                if RAY_START_TIMEOUT in err and attempt < attempts:
                    print("the job's local Ray did not start in time; running it again")
                    pause_before_retry(attempt)
                    continue
                raise AssertionError(f"the job ended (rc {job.returncode}) before it wrote a shard: {err[-3000:]}")
            os.kill(server.pid, signal.SIGSTOP)
            paused_until = time.time() + pause_s
            while time.time() < paused_until and job.poll() is None:  # a job that gave up ends the pause
                time.sleep(0.2)
            os.kill(server.pid, signal.SIGCONT)
            out, err = job.communicate(timeout=1200)
        finally:
            kill_group(job)
        return subprocess.CompletedProcess(command, job.returncode, out, err)
    raise AssertionError("unreachable")


@pytest.mark.slow
def test_s3_pause_beyond_the_retry_window_fails_in_one_line_and_a_rerun_survives_a_short_one(pausable_s3,
                                                                                                tmp_path):
    server, s3_env, client = pausable_s3
    env = {**local_env(), **s3_env, "PERSONA_RAY_S3_RETRY_S": "6", "PERSONA_RAY_S3_TIMEOUT_S": "2"}
    config = write_config(tmp_path / "infer.yaml", pairs={"input": str(SAMPLE_PAIRS)}, output="s3://pause-test/out",
                          **{**SETTINGS, "shard_size": 1000, "commit_every_s": 0.5})
    command = cli(config)

    long_pause = _run_with_pause(command, env, server, client, pause_s=25)
    last = long_pause.stderr.strip().splitlines()[-1]
    assert long_pause.returncode == 2, long_pause.stderr[-3000:]
    assert last.startswith("error: could not write s3://pause-test/out/personas/part-") and "Fix:" in last, last
    # Our traceback went to the log file, not the terminal (engine workers torn down mid-request
    # may still print their own shutdown noise)
    assert "persona_ray/core/storage.py" not in long_pause.stderr and "raise StorageError" not in long_pause.stderr
    names = [item["Key"] for item in client.list_objects_v2(Bucket="pause-test").get("Contents", [])]
    assert "out/manifest.json" not in names  # nothing marked complete
    kept = _shards_on_s3(client)

    short_pause = _run_with_pause(command, env, server, client, pause_s=3, after_shards=kept)
    assert short_pause.returncode == 0, short_pause.stderr[-3000:]
    manifest = json.loads(client.get_object(Bucket="pause-test", Key="out/manifest.json")["Body"].read())
    assert manifest["counts"]["unique_keys"] == manifest["counts"]["persona_records"] == 120
    assert manifest["counts"]["resumed_records"] > 0 and kept > 0  # the first run's shards were kept and reused
