"""Node loss: a Ray worker node killed mid-job, on a real multi-node cluster.

A head started here (`ray start --head`, token auth, the job server) with too few CPUs for the
engine, and two worker nodes joined to it, each with room for one engine. PI is submitted as a
job; once the engine has answered some batches, every process of its node is killed (SIGKILL, as
when a machine dies). The head sees the node die, Ray restarts the engine actor on the worker
node left (Ray Data's actors have max_restarts=-1 and retry their tasks; lost blocks are
recomputed), and the same job finishes with every (pair_id, side) exactly once: no resubmission.

The same for the ColBERT index (jobs/index.py): its passages are encoded by a pool of Ray Data actors
(1 CPU each) on the worker nodes, the head has no CPU for them; once some embedding shards are
written, the node of an encode actor is killed. The other actor takes the queued batches; Ray
restarts the lost actor on the node left and retries the batches it had in flight there (a batch's
shard is named by its passages and written whole, so a rerun replaces it), and the same job builds
PLAID from every passage once.
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
from persona_ray.retrieval.encode import SHARD_SUFFIX
from persona_ray.retrieval.recall import corpus_rows
from persona_ray.retrieval.search import PersonaRetriever
from tests.helpers import REPO, bundled_persona_rows, committed_rows, many_pairs
from tests.ray_head import Head, join_workers, session_members, start_head, wait_for

PAIRS, ENGINE_BATCH = 48, 8  # 12 engine batches: the kill lands after 2, with most still to answer
ENGINE_BATCHES = -(-2 * PAIRS // ENGINE_BATCH)  # a request per side of a pair
HEAD_CPUS, WORKER_CPUS = 2, 3  # the engine asks for 3 CPUs: only a worker node has room for it
SETTINGS = {
    "k_shot": 1, "max_attribute_chars": 30, "max_preference_chars": 50, "commit_every_s": 1.0,
    "engine": {"model": "tiny", "guided_decoding": True, "sampling": {"max_tokens": 96},
               "vllm": {"batch_size": ENGINE_BATCH, "max_concurrent_batches": 2, "cpus_per_engine": WORKER_CPUS}},
}
# The head declares a node dead after 3 missed health checks 1 s apart (Ray's defaults: 5, 3 s apart).
HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


def engine_actors(head: Head) -> list[dict]:
    """The job's vLLM engine actors (Ray Data's map workers of the engine stage), any state."""
    return [a for a in head.state("actors") if "vLLMEngineStage" in (a.get("class_name") or "")]


def engine_batches_answered(head: Head, actor_id: str) -> int:
    """Batches the engine actor has answered: its finished `submit` tasks (one per block of rows)."""
    return sum(1 for t in head.state("tasks") if t.get("actor_id") == actor_id
               and (t.get("name") or "").endswith(".submit") and t.get("state") == "FINISHED")


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
    head = start_head(work, num_cpus=HEAD_CPUS, system_config=HEALTH_CHECKS)
    nodes = [head]
    try:
        client = head.client()
        head.submit_job(client, submission_id="pi", entrypoint=f"{sys.executable} jobs/infer.py --config {config}",
                        runtime_env={"working_dir": str(REPO)})
        # Two worker nodes join while the job checks its input on the head; the engine waits for one.
        workers = join_workers(head, ("w1", "w2"), WORKER_CPUS)
        nodes += list(workers.values())

        deadline = time.time() + 600  # a loaded 2-core machine takes minutes to start an engine

        def running() -> None:
            assert client.get_job_status("pi") in {"PENDING", "RUNNING"}, client.get_job_logs("pi")[-3000:]
            assert time.time() < deadline, "the engine never answered"

        # The engine is up on a worker node; once it has answered some batches, that node is lost.
        # Its answers are what is watched, not the records committed: on a loaded machine the
        # records lag the engine by minutes, and the engine could be done before 8 were committed.
        while not (engines := [a for a in engine_actors(head) if a["state"] == "ALIVE"]):
            running()
            time.sleep(1)
        (up,) = engines
        lost = up["node_id"]
        assert lost in workers, "the engine is on the head"
        (survivor,) = set(workers) - {lost}
        while (answered := engine_batches_answered(head, up["actor_id"])) < 2:
            running()
            time.sleep(0.5)
        workers[lost].kill()
        killed_at = time.time()
        committed = committed_rows(output / "personas")
        print(f"worker node killed {killed_at - started:.0f} s in, the engine had answered {answered} of "
              f"{ENGINE_BATCHES} batches, {committed} records committed")
        assert answered < ENGINE_BATCHES, "the engine was done before the node was lost"

        status = wait_for(client, "pi", timeout=1200)
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


INDEX_PROMPTS, ENCODE_BATCH = 240, 4  # 60 shards: seconds of encoding on a quiet machine, minutes here
INDEX_WORKER_CPUS = 2  # each worker node has room for both encode actors: the one left takes them all


def encode_actors(head: Head) -> list[dict]:
    """The index job's encode actors (Ray Data's map workers of _EncodeActor), any state."""
    return [a for a in head.state("actors") if "_EncodeActor" in (a.get("class_name") or "")]


def written_shards(folder: Path) -> int:
    """Embedding shards written whole (a shard being written is a hidden temporary file)."""
    return sum(1 for p in folder.glob(f"*{SHARD_SUFFIX}") if not p.name.startswith("."))


def index_rows(count: int) -> list[dict]:
    """`count` rows with distinct texts as prompts (the bundled prompts, personas and sentences of
    responses, as in the retrieval tests): an indexed prompt's own row is its nearest."""
    base = bundled_persona_rows()
    return corpus_rows(base, [row[f] for row in base for f in ("pt_dpo_response", "dpo_response")], size=count)


@pytest.mark.slow
def test_worker_node_killed_during_index_encoding_job_finishes_with_the_index_complete(tmp_path):
    output = tmp_path / "index"
    rows = index_rows(INDEX_PROMPTS)
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = tmp_path / "index.yaml"
    config.write_text(yaml.safe_dump({"data": str(source), "output": str(output), "encode_workers": 2,
                                      "encode_batch": ENCODE_BATCH}))
    shards = output / "_staging" / "_encoded"
    expected_shards = -(-INDEX_PROMPTS // ENCODE_BATCH)

    work = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))
    started = time.time()
    # No CPU on the head: the encode actors and the PLAID build task can only run on the worker
    # nodes; the job's driver (a process of the job's supervisor actor, 0 CPUs) runs on the head.
    head = start_head(work, num_cpus=0, system_config=HEALTH_CHECKS)
    nodes = [head]
    try:
        # The worker nodes join before the job is submitted: on a loaded machine a node that
        # registers while the head takes in a job can miss `ray start`'s 30 s deadline.
        workers = join_workers(head, ("w1", "w2"), INDEX_WORKER_CPUS)
        nodes += list(workers.values())
        head_id = head.wait_node(head)
        client = head.client()
        head.submit_job(client, submission_id="index", entrypoint=f"{sys.executable} jobs/index.py --config {config}",
                        runtime_env={"working_dir": str(REPO)})

        deadline = time.time() + 600

        def running() -> None:
            assert client.get_job_status("index") in {"PENDING", "RUNNING"}, client.get_job_logs("index")[-3000:]
            assert time.time() < deadline, "encoding never started"

        # Both encode actors up (checkpoint loaded); the node of the most of them is the one lost.
        while len(alive := [a for a in encode_actors(head) if a["state"] == "ALIVE"]) < 2:
            running()
            time.sleep(0.5)
        on_node = {node: [a for a in alive if a["node_id"] == node] for node in {a["node_id"] for a in alive}}
        lost = max(on_node, key=lambda node: len(on_node[node]))
        assert lost in workers, "an encode actor is on the head"
        (survivor,) = set(workers) - {lost}
        lost_actors = {a["actor_id"] for a in on_node[lost]}
        # Once its actors have written some shards (not all), the node is lost.
        while written_shards(shards) < 2:
            running()
            time.sleep(0.05)
        assert {a["actor_id"] for a in encode_actors(head) if a["state"] == "ALIVE" and a["node_id"] == lost} \
            == lost_actors, "the encode actors moved before the kill"
        before = written_shards(shards)
        workers[lost].kill()
        killed_at = time.time()
        print(f"worker node killed {killed_at - started:.0f} s in, {len(lost_actors)} encode actor(s) on it, "
              f"{before} of {expected_shards} shards written")
        assert before < expected_shards, "encoding was done before the node was lost"

        status = wait_for(client, "index", timeout=1200)
        print(f"job {status} {time.time() - killed_at:.0f} s after the kill")
        logs = client.get_job_logs("index")
        driver_node = client.get_job_info("index").driver_node_id
        dead = [n["node_id"] for n in head.state("nodes") if n["state"] == "DEAD"]
        actors = encode_actors(head)
    finally:
        for worker in nodes[1:]:
            worker.kill()
        head.stop()
        assert all(session_members(node.process.pid) == [] for node in nodes), "processes of a node outlived it"

    assert status == "SUCCEEDED", logs[-3000:]
    assert driver_node == head_id and dead == [lost]
    # The lost actors were restarted once each, on the worker node left, and encoded there.
    restarted = [a for a in actors if a["actor_id"] in lost_actors]
    assert len(actors) == 2 and all(a["node_id"] == survivor and a["num_restarts"] == "1" for a in restarted), actors
    manifest = json.loads((output / "manifest.json").read_text())
    encode = manifest["encode"]
    print("encode:", {k: v for k, v in encode.items() if k != "processes"}, "processes:", encode["processes"])
    assert manifest["rows"] == encode["passages"] == len({row["prompt"] for row in rows}) == INDEX_PROMPTS
    assert encode["mode"] == "ray-actors" and encode["shards"] == expected_shards, encode  # a batch, a shard
    assert {f"{a['pid']}" for a in restarted} <= {p.rsplit(":", 1)[1] for p in encode["processes"]}
    assert not shards.exists()
    # Every passage's vectors are its own prompt's: a prompt finds its own row, whichever actor
    # (before or after the kill) encoded it.
    retriever = PersonaRetriever.load(str(output))
    for row in rows[::INDEX_PROMPTS // 8]:
        (hit,) = retriever.search(row["prompt"], k=1)
        assert hit["row_id"] == row["pair_id"], (row["prompt"], hit["prompt"])
    shutil.rmtree(work, ignore_errors=True)
