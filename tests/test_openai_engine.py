"""The OpenAI-compatible engine: against a real vLLM OpenAI server, and its failure handling."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest

from persona_ray.engines.settings import OpenAISettings, SamplingSettings
from persona_ray.engines.openai_engine import EngineAuthError, EngineConnectionError, EngineNotFoundError, OpenAICaller
from persona_ray.inference.infer import InferConfig, run_infer
from persona_ray.inference.parse import guided_regex
from persona_ray.core.shards import read_shards
from tests.helpers import SAMPLE_PAIRS, free_port


class _Scripted(BaseHTTPRequestHandler):
    """Answers each POST with the next scripted status; 200 gives a completion."""

    script: list[int] = []
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"body": body, "auth": self.headers.get("Authorization")})
        status = type(self).script.pop(0) if type(self).script else 200
        payload = {"choices": [{"text": "The user is calm and prefers tea.", "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 5, "completion_tokens": 8}} if status == 200 else {"error": "x"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Scripted.script, _Scripted.seen = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def _call(base_url: str, prompts: list[str], **overrides):
    cfg = OpenAISettings(base_url=base_url, backoff_s=0.01, max_retries=3, api_key_env="TEST_PR_KEY", **overrides)
    caller = OpenAICaller("m", SamplingSettings(max_tokens=16), cfg, regex="The user is [a-z ]+\\.")
    return caller({"prompt": np.array(prompts, dtype=object), "pair_id": np.array(prompts, dtype=object)})


def test_transient_errors_are_retried_with_backoff(scripted_server, monkeypatch):
    monkeypatch.setenv("TEST_PR_KEY", "sk-test-123")
    _Scripted.script = [503, 429]
    out = _call(scripted_server, ["p1"])
    assert out["generated_text"][0] == "The user is calm and prefers tea."
    assert out["finish_reason"][0] == "stop" and out["num_output_tokens"][0] == 8
    assert len(_Scripted.seen) == 3
    assert _Scripted.seen[-1]["auth"] == "Bearer sk-test-123"
    assert _Scripted.seen[-1]["body"]["structured_outputs"] == {"regex": "The user is [a-z ]+\\."}
    assert list(out["pair_id"]) == ["p1"]


def test_persistent_server_errors_become_error_rows(scripted_server):
    _Scripted.script = [500] * 4
    out = _call(scripted_server, ["p1"])
    assert list(out["finish_reason"]) == ["error"] and len(_Scripted.seen) == 4
    assert "HTTP 500" in out["error"][0] and "after 3 retries" in out["error"][0]
    _Scripted.script = [400]
    out = _call(scripted_server, ["p2"])
    assert out["error"][0].startswith("HTTP 400") and len(_Scripted.seen) == 5  # not retried


def test_auth_failure_stops_with_a_clear_message(scripted_server, monkeypatch):
    monkeypatch.setenv("TEST_PR_KEY", "sk-secret-value")
    _Scripted.script = [401]
    with pytest.raises(EngineAuthError, match=r"answered 401: check the API key in \$TEST_PR_KEY") as info:
        _call(scripted_server, ["p1"])
    assert "sk-secret-value" not in str(info.value)


def test_unknown_model_stops_the_job(scripted_server):
    _Scripted.script = [404]
    with pytest.raises(EngineNotFoundError, match="answered 404 .check base_url and the model name 'm'"):
        _call(scripted_server, ["p1"])


def test_unreachable_endpoint_is_a_connection_error():
    with pytest.raises(EngineConnectionError, match="cannot reach http://127.0.0.1:.* after 3 retries"):
        _call(f"http://127.0.0.1:{free_port()}/v1", ["p1"])


@pytest.fixture(scope="module")
def vllm_server(tiny_model):
    """`python -m vllm.entrypoints.openai.api_server` with the tiny model on loopback."""
    port = free_port()
    log = open(os.path.join(os.path.dirname(tiny_model), "vllm-server.log"), "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model, "--host", "127.0.0.1",
         "--port", str(port), "--max-model-len", "4096", "--enforce-eager", "--served-model-name", "tiny"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while time.time() < deadline:
        assert process.poll() is None, open(log.name).read()[-3000:]
        try:
            if httpx.get(base + "/v1/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(1)
    else:
        pytest.fail("vLLM OpenAI server did not start in 240 s")
    yield base + "/v1"
    process.terminate()
    process.wait(timeout=60)


@pytest.mark.slow
def test_pi_through_an_openai_compatible_server(vllm_server, ray_local, tmp_path):
    lines = SAMPLE_PAIRS.read_text().splitlines()[::3]  # 20 pairs, every domain
    source = tmp_path / "pairs.jsonl"
    source.write_text("\n".join(lines))
    cfg = InferConfig(pairs={"input": str(source)}, output=str(tmp_path / "out"), max_attribute_chars=40,
                      max_preference_chars=60,
                      engine={"model": "tiny", "backend": "openai", "sampling": {"max_tokens": 128},
                              "openai": {"base_url": vllm_server, "api": "completions", "max_concurrency": 8}})
    manifest = run_infer(cfg)
    assert manifest["counts"]["persona_records"] == manifest["counts"]["unique_keys"] == 40
    records = read_shards(str(tmp_path / "out" / "personas")).to_pylist()
    pattern = re.compile(guided_regex(40, 60))
    assert [r["raw_text"] for r in records if not pattern.fullmatch(r["raw_text"])] == []
    assert all(r["num_input_tokens"] > 500 and r["num_output_tokens"] > 0 for r in records)


@pytest.mark.slow
def test_unguided_judge_retries_then_counts_unparseable_verdicts(vllm_server, ray_local, tmp_path):
    """Over HTTP without guided decoding the random tiny judge rarely answers "1" or "2":
    unparseable verdicts are re-asked a bounded number of times, then counted, never dropped."""
    from persona_ray.quality.pi_eval import PIEvalConfig, run_pi_eval
    from tests.helpers import paper_rows, write_jsonl

    data = {"gold": write_jsonl(tmp_path / "gold.jsonl", paper_rows("", n=4))}
    cfg = PIEvalConfig(data=data, output=str(tmp_path / "eval"), persona_preference=False, saliency_min_count=1,
                       judge={"model": "tiny", "backend": "openai", "guided_decoding": False, "max_parse_retries": 2,
                              "openai": {"base_url": vllm_server, "max_concurrency": 8}})
    summary = run_pi_eval(cfg)["summary"]
    assert summary["requests"] == 4 * 2 * 2
    unparseable = summary["unparseable_after_retries"]
    # every request that stayed unparseable was asked 1 + max_parse_retries times
    assert summary["retried"] >= 2 * unparseable
    accuracy = json.loads((tmp_path / "eval" / "pi_accuracy.json").read_text())["accuracy"]
    overall = [r for r in accuracy if r["domain"] == "all"]
    assert sum(r["n"] for r in overall) == 8  # every persona counted, parseable or not
    assert sum(r["unparseable"] for r in overall) <= unparseable
