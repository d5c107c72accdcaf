"""Persona inference end to end: real Ray Data + vLLM (CPU) with the tiny model, S3 on moto; hostile
rows in the input; the command killed at a random moment and run again."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time

import pytest

from persona_ray.core import storage
from persona_ray.inference.infer import InferConfig, run_infer
from persona_ray.inference.prompt import TEMPLATE_VERSION
from persona_ray.inference.parse import guided_regex
from persona_ray.core.shards import read_shards
from persona_ray.testing.hostile import HOSTILE, good_ids, hostile_file_bytes
from tests.helpers import (REPO, SAMPLE_PAIRS, committed_rows, descendants, infer_command, kill_group,
                           local_env, write_yaml)

pytestmark = pytest.mark.slow

# Small guided bounds so that max_tokens always covers the longest match (a token is >= 1 char).
SETTINGS = {"engine": {"model": "tiny", "guided_decoding": True, "sampling": {"max_tokens": 128},
                       "vllm": {"batch_size": 8}},
            "max_attribute_chars": 40, "max_preference_chars": 60, "shard_size": 8}

def personas_by_key(output: str) -> dict[tuple[str, str], dict]:
    table = read_shards(storage.join(output, "personas"))
    rows = table.to_pylist()
    keys = [(r["pair_id"], r["side"]) for r in rows]
    assert len(keys) == len(set(keys)), "a (pair_id, side) appears twice"
    return dict(zip(keys, rows))


@pytest.fixture(scope="module")
def s3_run(s3_server, ray_local):
    """One uninterrupted run: input from S3 (the sample pairs with hostile rows planted among them),
    output to S3."""
    import boto3

    boto3.client("s3").create_bucket(Bucket="pi-data")
    storage.write_bytes("s3://pi-data/in/pairs.jsonl", hostile_file_bytes())
    cfg = InferConfig(pairs={"input": "s3://pi-data/in/pairs.jsonl"}, output="s3://pi-data/out", **SETTINGS)
    manifest = run_infer(cfg)
    return cfg, manifest


def test_guided_run_from_and_to_s3(s3_run):
    cfg, manifest = s3_run
    counts = manifest["counts"]
    assert counts["input_rows"] == len(good_ids()) + len(HOSTILE) and counts["valid_pairs"] == len(good_ids())
    assert counts["persona_records"] == counts["unique_keys"] == 2 * len(good_ids())
    personas = personas_by_key(cfg.output)
    assert {side for _, side in personas} == {"chosen", "rejected"}
    # Guided decoding: every output has the persona form. Only content checks may reject one.
    pattern = re.compile(guided_regex(cfg.max_attribute_chars, cfg.max_preference_chars))
    assert all(pattern.fullmatch(r["raw_text"]) for r in personas.values())
    # Content rules only: a random model's text may be degenerate or name a protected attribute.
    content_reasons = ("protected attribute", "degenerate")
    assert all(r["valid"] or any(c in r["reason"] for c in content_reasons) for r in personas.values())
    assert all(r["model"] == "tiny" and r["template_version"] == TEMPLATE_VERSION for r in personas.values())
    assert storage.read_json("s3://pi-data/out/manifest.json")["counts"] == counts


def test_every_hostile_row_is_quarantined_with_its_field_and_every_good_row_kept(s3_run):
    cfg, manifest = s3_run
    quarantine = read_shards(storage.join(cfg.output, "quarantine")).to_pylist()
    same_id = {json.loads(line)["id"]: {line} for line in SAMPLE_PAIRS.read_text().splitlines() if line.strip()}
    assert len(quarantine) == len(HOSTILE) == manifest["counts"]["quarantined"], quarantine
    for line, row_id, reason in HOSTILE:
        matches = [q for q in quarantine if reason in q["reason"] and (row_id is None or q["row_id"] == row_id)]
        assert len(matches) == 1, (row_id, reason, [q["reason"] for q in quarantine])
        # `raw` is the line as written (undecodable bytes shown as \xNN), never a wrapper; of two rows
        # sharing an id, either may be the one quarantined
        as_written = {line.decode("utf-8", errors="backslashreplace")} | same_id.get(row_id, set())
        assert matches[0]["raw"] in as_written, matches[0]["raw"][:200]
    assert "pairs.jsonl:" in next(q for q in quarantine if "UTF-8" in q["reason"])["reason"]  # file:line
    # Every good pair got both personas, the CRLF and U+2028 rows included: nothing valid was dropped.
    assert {pair_id for pair_id, _ in personas_by_key(cfg.output)} == good_ids()


class _EngineMustNotStart:
    """Stands in for the engine's actor: starting it fails the job, as an engine start is what is tested."""

    def __init__(self):
        raise AssertionError("the rerun started the generation step's actor (an engine)")

    def __call__(self, batch):
        return batch


def test_a_rerun_with_nothing_to_write_starts_no_engine(s3_run, monkeypatch):
    """Every persona of the run above is written: a rerun resumes all of them, writes nothing, and
    never runs the generation step, so no vLLM engine starts (minutes of a cluster's GPUs for a
    large model). The engine is replaced by an actor that fails the job if it ever starts."""
    cfg, first = s3_run
    import ray

    monkeypatch.setattr(type(cfg.engine), "generate", lambda self, requests, **kwargs: requests.map_batches(
        _EngineMustNotStart, compute=ray.data.ActorPoolStrategy(size=1)))
    counts = run_infer(cfg)["counts"]
    assert counts["resumed_records"] == first["counts"]["persona_records"] == 2 * len(good_ids())
    assert counts["written_this_run"] == 0 and counts["persona_records"] == 2 * len(good_ids())


def test_kill_at_a_random_moment_then_rerun_equals_the_uninterrupted_run(s3_run, ray_local, tmp_path):
    """The same input as the run above, through the `persona-ray infer` command in its own process
    (joined to this worker's Ray cluster, as jobs join a running cluster): killed (SIGKILL to the
    driver) once a random 30-80 % of the records are committed, then run again. The rerun resumes
    from the committed shards; the result equals the uninterrupted run above, and the quarantine
    holds each hostile row once. A kill loses at most the rows in flight."""
    reference, first = s3_run
    expected = 2 * len(good_ids())
    source = tmp_path / "pairs.jsonl"
    source.write_bytes(hostile_file_bytes())
    # Commits by time, not by count: every 0.2 s, with one batch of 8 records in flight, so a commit
    # holds a batch or two and the kill lands between commits (at 1 s with two batches in flight, the
    # tiny model's last commit could take the count from below the kill point to all of them).
    output = tmp_path / "out"
    config = write_yaml(tmp_path / "infer.yaml", pairs={"input": str(source)}, output=str(output),
                        **{**SETTINGS, "shard_size": 1000, "commit_every_s": 0.2,
                           "engine": {**SETTINGS["engine"], "vllm": {"batch_size": 8, "max_concurrent_batches": 1}}})
    # The driver is what is killed; Ray then ends its actors. No local Ray to start, twice.
    env = {**local_env(), "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    seed = int(time.time())
    target = random.Random(seed).uniform(0.3, 0.8)
    print(f"kill when {target:.0%} of the records are committed (seed {seed})")
    job = subprocess.Popen(infer_command(config), cwd=REPO, env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: list[int] = []
    started: list = []
    try:
        while job.poll() is None:
            rows = committed_rows(output / "personas")
            if not seen or rows != seen[-1]:
                seen.append(rows)
            if rows >= target * expected:
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
        rerun = subprocess.run(infer_command(config), cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    finally:
        kill_group(job, started)  # now clean up the killed job's leftovers
    assert not finished_before_kill, f"the job finished before {target:.0%} was committed; commits seen: {seen}"
    print(f"killed with {committed}/{expected} records committed; commits seen: {seen}")
    assert 0.3 * expected <= committed < expected, f"commits seen: {seen}"
    assert len([n for n in seen if 0 < n < expected]) >= 2  # results arrived in steps, not all at the end
    assert not marked_complete
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    counts = json.loads((output / "manifest.json").read_text())["counts"]
    assert counts["resumed_records"] == committed and counts["written_this_run"] == expected - committed
    fields = ("persona", "raw_text", "valid", "reason")
    resumed = {key: {f: row[f] for f in fields} for key, row in personas_by_key(str(output)).items()}
    assert resumed == {key: {f: row[f] for f in fields} for key, row in personas_by_key(reference.output).items()}
    quarantine = read_shards(str(output / "quarantine")).to_pylist()
    assert len(quarantine) == len(HOSTILE) and counts["quarantined"] == first["counts"]["quarantined"]

