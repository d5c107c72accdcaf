"""Shared fixtures: a local Ray cluster, an S3 server (moto) on 127.0.0.1, the tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import REAL_PERSONAS, REPO, S3Server, free_port, shared_data
from tests.tiers import SLOW_FIXTURES, ProcessGuard

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("PERSONA_RAY_CACHE", str(REPO / ".cache" / "persona_ray"))
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
# Serve gives its HTTP proxy 5 s to start; beside a second test worker that is too short here.
os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")


@pytest.fixture
def real_personas() -> Path:
    """The real BeaverTails persona file (499 rows), or a plain skip where it is absent. A skip from
    a fixture is reported at the test's own line in the summary, not at this helper's."""
    return shared_data(REAL_PERSONAS)


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """Local Ray, started after the S3 server so every worker inherits its endpoint and test
    credentials, as workers on a real cluster get theirs from their own environment."""
    import ray

    from persona_ray.core.ray_runtime import ensure_ray

    ensure_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model() -> str:
    from persona_ray.testing.tiny_model import build_tiny_model

    return str(build_tiny_model())


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on loopback, in a process of its own so that a test can pause it (SIGSTOP)
    as an object store stalls; its endpoint and test credentials go into the environment."""
    import socket
    import subprocess
    import sys
    import time

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; from moto.server import ThreadedMotoServer; "
         f"ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False).start(); time.sleep(86400)"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    deadline = time.time() + 60
    while True:  # listening yet?
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None and time.time() < deadline, "the moto S3 server did not start"
            time.sleep(0.1)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    server = S3Server(env, process)
    yield server
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.resume()  # a test that failed while it was paused
    process.kill()
    process.wait()


@pytest.fixture
def s3_bucket(s3_server):
    import uuid

    import boto3

    name = f"bucket-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server.env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return name


def orphaned_engine_processes() -> list[int]:
    """vLLM engine processes of this test worker whose parent is gone (re-parented to init). A job
    killed or failed under a test can leave its engine's worker process behind, holding gigabytes
    and CPU that slow every test after it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            if parent != 1:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if not cmdline.read().startswith(b"VLLM::"):
                    continue
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if f"PYTEST_XDIST_WORKER={worker}".encode() in environ.read().split(b"\0"):
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.fixture(autouse=True)
def _no_orphaned_engines():
    yield
    import signal

    for pid in orphaned_engine_processes():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# Scheduling: each file is run whole by one worker (`--dist loadfile`), except the files whose
# tests start Ray clusters of their own (a head, and worker nodes joined to it): one worker runs
# them one after another. Two of them at once on two cores starved each other's Ray of CPU (a
# node-loss test took 152 s alone and 875 s beside the pipeline job).
OWN_CLUSTERS = ("test_job_submit.py", "test_node_loss.py")
# Then the longest files first (minutes each, measured): the free worker takes the next one, so
# long files started last would leave one worker running alone at the end. `make test` passes
# --no-loadscope-reorder: xdist would otherwise order them by their number of tests.
LONGEST_FIRST = (*OWN_CLUSTERS, "test_world.py", "test_pi_student.py", "test_train.py", "test_infer.py", "test_retrieve.py", "test_serve.py",
                 "test_smollm2.py", "test_infer_faults.py", "test_generate_judge.py", "test_openai_engine.py",
                 "test_augment.py", "test_pi_eval.py")


def pytest_itemcollected(item):
    """`slow` from the fixtures a test uses, as it is collected (before -m selects on it)."""
    if SLOW_FIXTURES & set(item.fixturenames):
        item.add_marker(pytest.mark.slow)


def pytest_xdist_make_scheduler(config, log):
    """xdist's file scheduling, with the OWN_CLUSTERS files as one unit."""
    from xdist.scheduler import LoadFileScheduling

    class OwnClustersTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            return "own-clusters" if file.rsplit("/", 1)[-1] in OWN_CLUSTERS else file

    return OwnClustersTogether(config, log)


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if item.get_closest_marker("slow"):
        yield
        return
    with ProcessGuard(item.nodeid):
        yield
