"""`ray job submit` for real: a Ray head started here on 127.0.0.1 (job server, token auth on, as
Ray 2.60 starts it), persona inference submitted with the `ray job submit` CLI and the working
directory uploaded, resubmitted (it resumes and writes nothing twice), then the head stopped.

Only this head is stopped (every process of its session): `ray stop` would also stop the local
cluster a parallel test worker runs.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SAMPLE_PAIRS, free_port

RAY = str(Path(sys.executable).with_name("ray"))
# A user's runtime env with a variable the engine also sets (VLLM_CPU_KVCACHE_SPACE): it must not
# conflict with the project's own (Ray refuses same-key env_vars unless told which one wins).
USER_RUNTIME_ENV = {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1", "PERSONA_RAY_LOG_FORMAT": "json"}}


class Head:
    """A `ray start --head --block` process group, with its address and the client's environment."""

    def __init__(self, work: Path):
        token = work / "auth_token"
        token.write_text(secrets.token_hex(16))
        token.chmod(0o600)
        # Clients find the head through --address and the token through RAY_AUTH_TOKEN_PATH; nothing
        # from this test process's own Ray or S3 settings leaks into the head or the jobs.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
        self.token = token.read_text()
        dashboard = free_port()
        ports = {"port": free_port(), "dashboard-port": dashboard, "dashboard-agent-listen-port": free_port(),
                 "dashboard-agent-grpc-port": free_port(), "runtime-env-agent-port": free_port(),
                 "metrics-export-port": free_port(), "ray-client-server-port": free_port()}
        self.address = f"http://127.0.0.1:{dashboard}"
        self.log = work / "head.log"
        command = [RAY, "start", "--head", "--block", "--num-cpus=4", "--include-dashboard=true",
                   "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                   f"--temp-dir={work / 'ray'}", *[f"--{name}={port}" for name, port in ports.items()]]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {self.token}"})

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while True:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                self.client().list_jobs()
                return
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(1)

    def stop(self) -> None:
        """SIGTERM to `ray start --block` (it stops what it started), then SIGKILL to whatever is
        still in its session: Ray workers put themselves in process groups of their own."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        deadline = time.time() + 20
        while (left := session_members(self.process.pid)) and time.time() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        self.process.wait(timeout=10)


def session_members(sid: int) -> list[int]:
    """Live processes of session `sid` (zombies left unreaped by a container's init are not)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if os.getsid(int(entry.name)) == sid and state != "Z":
                    members.append(int(entry.name))
            except (OSError, IndexError):
                pass
    return members


@pytest.fixture(scope="module")
def head():
    # Short: Ray's socket paths under --temp-dir must stay under the OS limit (107 characters).
    work = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))
    started = Head(work)
    try:
        started.wait_ready()
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
    config["pairs"]["input"] = str(SAMPLE_PAIRS)
    config["engine"]["sampling"] = {"max_tokens": 192, "temperature": 1.0, "seed": 0}
    config_file = tmp_path / "infer.yaml"
    config_file.write_text(yaml.safe_dump(config))
    entrypoint = (sys.executable, "jobs/infer.py", "--config", str(config_file))

    first = submit_cli(head, "pi-first", *entrypoint)
    client = head.client()
    assert client.get_job_status("pi-first") == "SUCCEEDED", first.stdout[-3000:] + first.stderr[-2000:]
    counts = json.loads((output / "manifest.json").read_text())["counts"]
    assert counts["persona_records"] == counts["unique_keys"] == counts["expected_records"] == 120
    assert counts["written_this_run"] == 120 and counts["resumed_records"] == 0
    # The job ran on the head's cluster, under the user's runtime env (JSON logs), with the project's code.
    logs = client.get_job_logs("pi-first")
    summary = [json.loads(line) for line in logs.splitlines() if line.startswith("{") and '"stage": "infer"' in line]
    assert summary and summary[-1]["job_id"] == "pi-first" and summary[-1]["persona_records"] == 120
    before = persona_files(output)

    second = submit_cli(head, "pi-second", *entrypoint)
    assert client.get_job_status("pi-second") == "SUCCEEDED", second.stdout[-3000:] + second.stderr[-2000:]
    counts = json.loads((output / "manifest.json").read_text())["counts"]
    assert counts["resumed_records"] == 120 and counts["written_this_run"] == 0
    assert counts["persona_records"] == counts["unique_keys"] == 120
    assert persona_files(output) == before  # not one shard written again
