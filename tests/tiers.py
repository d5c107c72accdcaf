"""The test tiers. A test is `slow` when it starts Ray, a vLLM engine, a Serve app or a process of
its own (a job, a server, a Ray node). Tests using one of SLOW_FIXTURES (directly or through
another fixture) are marked so at collection (tests/conftest.py); a test that starts a process of
the environment without the mark fails at once (ProcessGuard), so a new test cannot forget it.
`make test-fast` runs the tests that are not slow; `make test` runs both tiers."""

from __future__ import annotations

import os
import sys

SLOW_FIXTURES = frozenset({"ray_local", "head", "vllm_server", "s3_server"})


class SlowTestNotMarked(AssertionError):
    pass


class ProcessGuard:
    """While a test not marked slow runs (its set-up, call and teardown), starting a process of the
    project's environment is an error that says what to do: a Python process (a job, a server, a
    multiprocessing worker such as vLLM's engine core) or a binary in the environment (Ray's GCS
    and raylet, the CLIs). System tools a library may call (`uname`, `git`) are not refused."""

    def __init__(self, nodeid: str):
        self.nodeid = nodeid

    def refuse(self, what: str):
        raise SlowTestNotMarked(f"{self.nodeid} starts a process ({what[:200]}) but is not marked slow: mark it "
                                "@pytest.mark.slow, or use a fixture of tests/tiers.py SLOW_FIXTURES")

    @staticmethod
    def of_the_environment(command: str) -> bool:
        program = command.split()[0]
        return (program.startswith((sys.prefix, sys.base_prefix)) or os.path.basename(program).startswith("python")
                or program in {"ray", "persona-ray", "vllm", "moto_server"})

    def __enter__(self):
        import multiprocessing.process
        import subprocess

        guard = self
        self.saved = subprocess.Popen._execute_child, multiprocessing.process.BaseProcess.start
        execute, _ = self.saved

        def execute_child(popen, args, *rest, **kwargs):
            command = " ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args)
            if guard.of_the_environment(command):
                guard.refuse(command)
            return execute(popen, args, *rest, **kwargs)

        def start(process):
            guard.refuse(f"multiprocessing {process.name}")

        subprocess.Popen._execute_child = execute_child
        multiprocessing.process.BaseProcess.start = start
        return self

    def __exit__(self, *exc):
        import multiprocessing.process
        import subprocess

        subprocess.Popen._execute_child, multiprocessing.process.BaseProcess.start = self.saved
        return False
