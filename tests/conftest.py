"""Shared fixtures: a local Ray cluster, an S3 server (moto) on 127.0.0.1, the tiny model."""

from __future__ import annotations

import json
import os
import random
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PAIRS = REPO / "persona_ray" / "data" / "sample_pairs.jsonl"
PI_EXEMPLARS = REPO / "persona_ray" / "data" / "pi_exemplars.yaml"
# Real data kept beside the repository, never in it (CI has it; a plain clone does not): read it
# through shared_data(), which skips the test plainly when it is absent.
SHARED_DATA = REPO.parent / "shared" / "data"
REAL_PERSONAS = "beavertails-test-personas.jsonl"

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("PERSONA_RAY_CACHE", str(REPO / ".cache" / "persona_ray"))
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
# Serve gives its HTTP proxy 5 s to start; beside a second test worker that is too short here.
os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")


def free_port() -> int:
    """A free port in 20000-31999: outside the OS's ephemeral range, where every port-0 bind lands
    (a parallel test worker's Ray cluster makes many), and outside Ray's worker ports (10002-19999),
    so nobody else takes it between this check and the bind that follows."""
    for port in random.sample(range(20000, 32000), 500):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-31999")


def field_line(prompt: str, header: str) -> str:
    """The line right after `header` in a judge prompt (where a delimited field sits)."""
    lines = prompt.splitlines()
    return lines[lines.index(header) + 1]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def shared_data(name: str = REAL_PERSONAS, what: str = "real personas, not redistributable") -> Path:
    """``../shared/data/<name>``, or skip the calling test (or fixture) saying what is missing.

    The file cannot ship with the repository, so tests that need it run where it exists (CI) and
    skip elsewhere; ``-ra`` (pyproject addopts) lists the reason in pytest's short summary. Call it
    from a fixture (as ``real_personas`` does) so the summary line names the test, not this file."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"needs ../shared/data/{name} ({what}); runs where it exists, e.g. CI")
    return path


@pytest.fixture
def real_personas() -> Path:
    """The real BeaverTails persona file (499 rows), or a plain skip where it is absent. A skip from
    a fixture is reported at the test's own line in the summary, not at this helper's."""
    return shared_data(REAL_PERSONAS)


def bundled_persona_rows() -> list[dict]:
    """60 rows shaped like the real persona file (id, prompt, gold and retrieved personas, two
    model responses), built only from data bundled in the package, for tests of mechanics.

    Prompts and responses are the sample pairs (their chosen/rejected answers stand in for the
    PT-DPO and DPO outputs); personas are the 20 persona-inference exemplars. For every row the
    four personas differ, and no two rows share the same (chosen, rejected) pair, so a row's
    personas identify it."""
    import yaml

    exemplars = yaml.safe_load(PI_EXEMPLARS.read_text())
    personas = [" ".join(e["persona"].split()) for domain in exemplars.values() for e in domain]
    n = len(personas)  # 20 (5 per domain)
    rows = []
    for i, pair in enumerate(read_jsonl(SAMPLE_PAIRS)):
        shift = i // n  # 0..2 over 60 rows: offsets {0}, {1..3}, {6}, {7..9} never collide
        rows.append({
            "id": pair["id"], "prompt": pair["prompt"], "domain": pair["domain"],
            "chosen_persona": personas[i % n], "rejected_persona": personas[(i + 1 + shift) % n],
            "retr_chosen_persona": personas[(i + 6) % n], "retr_rejected_persona": personas[(i + 7 + shift) % n],
            "pt_dpo_response": pair["chosen"], "dpo_response": pair["rejected"],
        })
    return rows


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
    """A moto S3 server on loopback; credentials and endpoint go into the environment."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    import uuid

    import boto3

    name = f"bucket-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
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


# The longest test files (minutes each, measured in CI) go first: with `--dist loadfile` each
# worker takes the next file when it is free, so long files started last would leave one worker
# running alone at the end. `make test` passes --no-loadscope-reorder: xdist would otherwise
# order the files by their number of tests, which put the two longest files last.
LONGEST_FIRST = ("test_job_submit.py", "test_infer_faults.py", "test_smollm2.py", "test_train.py", "test_world.py",
                 "test_node_loss.py", "test_serve.py", "test_retrieve.py", "test_generate_judge.py",
                 "test_pi_eval.py", "test_openai_engine.py", "test_infer.py")


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
