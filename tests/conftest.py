"""Shared fixtures: a local Ray cluster, an S3 server (moto) on 127.0.0.1, the tiny model."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PAIRS = REPO / "persona_ray" / "data" / "sample_pairs.jsonl"
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("PERSONA_RAY_CACHE", str(REPO / ".cache" / "persona_ray"))
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def field_line(prompt: str, header: str) -> str:
    """The line right after `header` in a judge prompt (where a delimited field sits)."""
    lines = prompt.splitlines()
    return lines[lines.index(header) + 1]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
