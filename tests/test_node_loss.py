"""Node loss: the Ray worker node that runs the PI engine killed while it answers.

A head started here (`ray start --head`, token auth, the job server) with too few CPUs for the
engine, and two worker nodes joined to it, each with room for one engine. PI is submitted as a
job; once the engine has answered some rows, every process of its node is killed (SIGKILL, as
when a machine dies). The head sees the node die, Ray restarts the engine actor on the worker
node left (Ray Data's actors have max_restarts=-1 and retry their tasks; lost blocks are
recomputed), and the same job finishes with every (pair_id, side) exactly once: no resubmission.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from persona_ray.core.shards import read_shards
from tests.conftest import REPO
from tests.ray_head import Head, Worker, session_members
from tests.test_infer_faults import committed_rows, many_pairs
from tests.test_job_submit import wait_for

PAIRS = 100
HEAD_CPUS, WORKER_CPUS = 2, 3  # the engine asks for 3 CPUs: only a worker node has room for it
SETTINGS = {
    "k_shot": 1, "max_attribute_chars": 30, "max_preference_chars": 50, "commit_every_s": 1.0,
    "engine": {"model": "tiny", "guided_decoding": True, "sampling": {"max_tokens": 96},
               "vllm": {"batch_size": 8, "max_concurrent_batches": 2, "cpus_per_engine": WORKER_CPUS}},
}
# The head declares a node dead after 3 missed health checks 1 s apart (Ray's defaults: 5, 3 s apart).
HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


def engine_actors(head: Head) -> list[dict]:
    """The job's vLLM engine actors (Ray Data's map workers of the engine stage), any state."""
    return [a for a in head.state("actors") if "vLLMEngineStage" in (a.get("class_name") or "")]


@pytest.mark.slow
def test_worker_node_killed_during_pi_job_finishes_with_every_record_once(tiny_model, tmp_path):
    output = tmp_path / "pi"
    source = tmp_path / "pairs.jsonl"
    many_pairs(source, PAIRS)
    config = tmp_path / "infer.yaml"
    config.write_text(yaml.safe_dump({"pairs": {"input": str(source)}, "output": str(output), **SETTINGS}))

    # Short: Ray's socket paths under --temp-dir must stay under the OS limit (107 characters).
    work = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))
    started = time.time()
    head = Head(work, num_cpus=HEAD_CPUS, system_config=HEALTH_CHECKS)
    nodes = [head]
    try:
        head.wait_ready()
        client = head.client()
        client.submit_job(submission_id="pi", entrypoint=f"{sys.executable} jobs/infer.py --config {config}",
                          runtime_env={"working_dir": str(REPO)})
        # Two worker nodes join while the job checks its input on the head; the engine waits for one.
        nodes += [Worker(head, name, WORKER_CPUS) for name in ("w1", "w2")]
        workers = {head.wait_node(worker): worker for worker in nodes[1:]}

        deadline = time.time() + 600  # a loaded 2-core machine takes minutes to start an engine

        def running() -> None:
            assert client.get_job_status("pi") in {"PENDING", "RUNNING"}, client.get_job_logs("pi")[-3000:]
            assert time.time() < deadline, "the engine never answered"

        # The engine is up on a worker node; once it has answered some rows, that node is lost.
        while not (engines := [a for a in engine_actors(head) if a["state"] == "ALIVE"]):
            running()
            time.sleep(1)
        (lost,) = [a["node_id"] for a in engines]
        assert lost in workers, "the engine is on the head"
        (survivor,) = set(workers) - {lost}
        while committed_rows(output / "personas") < 8:
            running()
            time.sleep(0.2)
        workers[lost].kill()
        killed_at = time.time()
        committed = committed_rows(output / "personas")
        print(f"worker node killed {killed_at - started:.0f} s in, {committed} records committed")
        assert committed < 2 * PAIRS, "the job was done before the node was lost"

        status = wait_for(client, "pi", timeout=600)
        print(f"job {status} {time.time() - killed_at:.0f} s after the kill")
        logs = client.get_job_logs("pi")
        dead = [n["node_id"] for n in head.state("nodes") if n["state"] == "DEAD"]
        (engine,) = engine_actors(head)
    finally:
        for worker in nodes[1:]:
            worker.kill()  # as fast as a stop, and they hold nothing to save
        head.stop()
        assert all(session_members(node.process.pid) == [] for node in nodes), "processes of a node outlived it"

    assert status == "SUCCEEDED", logs[-3000:]
    assert dead == [lost]
    # One engine actor, restarted once, on the worker node left.
    assert engine["node_id"] == survivor and engine["num_restarts"] == "1", engine
    records = read_shards(str(output / "personas"), columns=["pair_id", "side"]).to_pylist()
    keys = [(r["pair_id"], r["side"]) for r in records]
    assert len(keys) == len(set(keys)) == 2 * PAIRS, "a (pair_id, side) lost or written twice"
    assert {pair_id for pair_id, _ in keys} == {f"many-{i:05d}" for i in range(PAIRS)}
    counts = json.loads((output / "manifest.json").read_text())["counts"]
    assert counts["valid_pairs"] == PAIRS and counts["resumed_records"] == 0
    assert counts["persona_records"] == counts["unique_keys"] == counts["expected_records"] == 2 * PAIRS
    assert counts["written_this_run"] == 2 * PAIRS
    shutil.rmtree(work, ignore_errors=True)  # kept when the test fails: the nodes' logs are in it
