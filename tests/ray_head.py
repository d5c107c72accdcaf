"""Ray nodes started here for tests of a real cluster: a `ray start --head --block` (job server,
token auth on, as Ray 2.60 starts it) and worker nodes joined to it, each on 127.0.0.1 with ports
of its own, each its own session of processes.

Only these nodes are stopped (every process of their session): `ray stop` would also stop the
local cluster a parallel test worker runs.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import free_port

RAY = str(Path(sys.executable).with_name("ray"))


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


def kill_session(sid: int, timeout: float = 20) -> None:
    """SIGKILL every process of session `sid` until none is left: Ray workers put themselves in
    process groups of their own, so the group of `ray start` alone is not all of it."""
    deadline = time.time() + timeout
    while (left := session_members(sid)) and time.time() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


class _Node:
    process: subprocess.Popen
    log: Path

    def _start(self, command: list[str], env: dict) -> None:
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def stop(self) -> None:
        """SIGTERM to `ray start --block` (it stops what it started), then SIGKILL to whatever is
        still in its session."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        kill_session(self.process.pid)
        self.process.wait(timeout=10)

    def is_listed(self, listed: dict) -> bool:
        """Whether `listed` (a node in Ray's state API) is this node."""
        raise NotImplementedError

    def kill(self) -> None:
        """The node lost at once, as when its machine dies: SIGKILL to every process of its session."""
        kill_session(self.process.pid)
        self.process.wait(timeout=10)


def _agent_ports() -> dict[str, int]:
    """Ports every node opens; the defaults are fixed numbers, taken by any other node here."""
    return {"dashboard-agent-listen-port": free_port(), "dashboard-agent-grpc-port": free_port(),
            "runtime-env-agent-port": free_port(), "metrics-export-port": free_port()}


class Head(_Node):
    """A `ray start --head --block` process group, with its address and the client's environment."""

    def __init__(self, work: Path, num_cpus: int = 4, system_config: dict | None = None):
        token = work / "auth_token"
        token.write_text(secrets.token_hex(16))
        token.chmod(0o600)
        # Clients find the head through --address and the token through RAY_AUTH_TOKEN_PATH; nothing
        # from this test process's own Ray or S3 settings leaks into the head or the jobs.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
        self.token = token.read_text()
        self.work = work
        dashboard = free_port()
        self.gcs_port = free_port()
        ports = {"port": self.gcs_port, "dashboard-port": dashboard, **_agent_ports(),
                 "ray-client-server-port": free_port()}
        self.address = f"http://127.0.0.1:{dashboard}"
        self.log = work / "head.log"
        self._start([RAY, "start", "--head", "--block", f"--num-cpus={num_cpus}", "--include-dashboard=true",
                     "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                     f"--temp-dir={work / 'ray'}", *[f"--{name}={port}" for name, port in ports.items()],
                     *([f"--system-config={json.dumps(system_config)}"] if system_config else [])], self.env)

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {self.token}"})

    def wait_ready(self, timeout: float = 240) -> None:
        """Until the head runs jobs: its job server answers, then a probe job (`true`) is taken and
        succeeds. The job server answers before the head's job agent registers (on a loaded
        machine, tens of seconds before), and a job submitted in between is refused. A failed
        probe is an error: `start_head` starts the head again."""
        deadline = time.time() + timeout
        while True:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                self.client().list_jobs()
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        client = self.client()
        probe = f"ready-{secrets.token_hex(4)}"
        self.submit_job(client, timeout=max(deadline - time.time(), 1), submission_id=probe, entrypoint="true")
        while (status := client.get_job_status(probe)) not in {"SUCCEEDED", "FAILED", "STOPPED"}:
            assert time.time() < deadline, f"the probe job is still {status}"
            time.sleep(0.5)
        assert status == "SUCCEEDED", f"the probe job {status}: {client.get_job_info(probe).message}"

    def submit_job(self, client, timeout: float = 120, **job) -> None:
        """client.submit_job(**job), again while the head's job agent is not up yet: on a loaded
        machine it registers some seconds after the job server first answers."""
        deadline = time.time() + timeout
        while True:
            try:
                client.submit_job(**job)
                return
            except RuntimeError as exc:
                if "No available agent" not in str(exc) or time.time() > deadline:
                    raise
                time.sleep(1)

    def state(self, kind: str, retry_s: float = 90) -> list[dict]:
        """Ray's state API (`ray list nodes|actors`) over the dashboard, with the token; asked again
        while the dashboard refuses connections (on a loaded machine it can restart, or answer
        some seconds after the job server)."""
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"{self.address}/api/v0/{kind}?limit=10000&detail=1",
                                         headers={"Authorization": f"Bearer {self.token}"})
        deadline = time.time() + retry_s
        while True:
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return json.loads(response.read())["data"]["result"]["result"]
            except (urllib.error.URLError, ConnectionError) as exc:
                if isinstance(exc, urllib.error.HTTPError) or time.time() > deadline:
                    raise
                time.sleep(2)

    def wait_node(self, node: _Node, timeout: float = 120) -> str:
        """The id of `node` once the head lists it alive: the state API lists a node some seconds
        after its job server or raylet answers."""
        deadline = time.time() + timeout
        while True:
            assert node.process.poll() is None, node.log.read_text()[-3000:]
            listed = [n["node_id"] for n in self.state("nodes") if n["state"] == "ALIVE" and node.is_listed(n)]
            if listed:
                return listed[0]
            assert time.time() < deadline, f"node not listed: {node.log.read_text()[-3000:]}"
            time.sleep(1)

    def is_listed(self, listed: dict) -> bool:
        return listed["is_head_node"]


def start_head(work: Path, attempts: int = 3, ready_s: float = 150, **settings) -> Head:
    """A Head (settings as Head's) that runs jobs, started again with new ports when it does not
    get there. Its ports are free when picked but not held until `ray start` binds them, so a Ray
    cluster starting beside it (a parallel test worker's) can take one first: the head then
    talks to that cluster's agent and gets "Invalid authentication token", or none at all."""
    for attempt in range(1, attempts + 1):
        folder = work / str(attempt)  # short: Ray's socket paths must stay under 107 characters
        folder.mkdir()
        head = Head(folder, **settings)
        try:
            head.wait_ready(timeout=ready_s)
            return head
        except Exception as exc:  # noqa: BLE001 - any way of not becoming ready
            head.stop()
            if attempt == attempts:
                raise
            print(f"head not ready ({str(exc)[:300]}); starting it again with other ports")
    raise AssertionError("unreachable")


class Worker(_Node):
    """A second node: `ray start --address=<head> --block` with its own ports and temp folder, in a
    session of its own so that it can be lost alone."""

    def __init__(self, head: Head, name: str, num_cpus: int, attempt: int = 1):
        self.head, self.name = head, name
        self.log = head.work / f"{name}-{attempt}.log"
        # Worker ports from the OS (0): the head's raylet hands out the default range.
        self._start([RAY, "start", f"--address=127.0.0.1:{head.gcs_port}", "--block", f"--num-cpus={num_cpus}",
                     f"--node-name={name}", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                     f"--temp-dir={head.work / f'{name}-{attempt}'}",
                     "--min-worker-port=0", "--max-worker-port=0",
                     *[f"--{flag}={port}" for flag, port in _agent_ports().items()]], head.env)

    def is_listed(self, listed: dict) -> bool:
        return listed["node_name"] == self.name


def wait_for(client, submission_id: str, timeout: float = 1800) -> str:
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout
    while (status := client.get_job_status(submission_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                                  JobStatus.STOPPED}:
        assert time.time() < deadline, f"{submission_id} still {status}"
        time.sleep(2)
    return status


def pause_before_retry(attempt: int) -> None:
    """Before starting again a node that missed Ray's registration deadline: longer after each
    try, so that a burst of load can pass."""
    time.sleep(10 * attempt)


def join_workers(head: Head, names: tuple[str, ...], num_cpus: int, attempts: int = 5) -> dict[str, Worker]:
    """Worker nodes joined to `head`, by node id, one after another (two nodes starting at once on
    a loaded 2-core machine made each other miss the deadline). Ray 2.60 gives a starting node 30 s
    (a constant in ray/_private/node.py) to register with the GCS; a node that misses it ("The
    current node timed out during startup") exits: it is started again after
    `pause_before_retry` (a node that is still running and not listed fails the test). On failure
    every worker started here is stopped."""
    joined: dict[str, Worker] = {}
    started: list[Worker] = []
    try:
        for name in names:
            for attempt in range(1, attempts + 1):
                worker = Worker(head, name, num_cpus, attempt=attempt)
                started.append(worker)
                try:
                    joined[head.wait_node(worker)] = worker
                    break
                except AssertionError:
                    if worker.process.poll() is None or attempt == attempts:
                        raise
                    worker.stop()
                    print(f"worker {name} exited before it registered; starting it again")
                    pause_before_retry(attempt)
    except BaseException:
        for worker in started:
            worker.stop()
        raise
    return joined
