"""What a person sees while a long command runs (the pipeline, the server): its own lines, and
nothing else.

`Terminal` keeps a handle on the real terminal, then points file descriptors 1 and 2 at the run's
log file, so everything else — Python logging, Ray, Ray Data, vLLM, native libraries — lands in
the log (with `verbose`, the output stays on the terminal instead). A background thread redraws
the current stage's line from the job's progress file (core/progress.py): rows done / total,
rate, ETA; jobs that do not count show the time spent.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from persona_ray.core import progress

BAR = 24


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def stage_line(number: int, count: int, name: str, started: float, state: dict | None, now: float) -> str:
    """"[ 4/11] sft        ██████░░░░  12/40 steps  0.8/s  ETA 35s  (1m02s)" — or, without counts,
    the time spent. `state` is what the job last reported (core/progress.read)."""
    head = f"[{number:>2}/{count}] {name:<10}"
    elapsed = now - started
    if not state or not state.get("total") or state.get("time", 0) < started:
        return f"{head} {'':<{BAR}}  running  ({_duration(elapsed)})"
    done, total = min(state["done"], state["total"]), state["total"]
    filled = int(BAR * done / total)
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = f"ETA {_duration((total - done) / rate)}" if rate > 0 and done < total else ""
    return (f"{head} {'█' * filled}{'░' * (BAR - filled)}  {done}/{total} {state['unit']}  "
            f"{rate:.2f}/s  {eta}  ({_duration(elapsed)})").rstrip()


class Terminal:
    """Progress lines on the terminal; all other output of this process into `log_path`."""

    def __init__(self, log_path: str, progress_path: str | None = None, verbose: bool = False):
        self.log_path, self.progress_path, self.verbose = log_path, progress_path, verbose
        self.out = None  # the real terminal
        self.saved: list[int] = []
        self.live = False  # redraw one line in place (a TTY), or print a line now and then (CI, files)
        self._stage: tuple[int, int, str, float] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Terminal":
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = [os.dup(1), os.dup(2)]
        self.out = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
        self.live = self.out.isatty()
        if not self.verbose:
            log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(log)
        self._thread = threading.Thread(target=self._redraw, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        for fd in self.saved:
            os.close(fd)
        self.out.close()

    def say(self, text: str) -> None:
        with self._lock:
            self.out.write(("\r\033[K" if self.live else "") + text + "\n")

    def start(self, number: int, count: int, name: str) -> None:
        if self.progress_path:
            try:
                os.remove(self.progress_path)  # the last stage's numbers are not this one's
            except FileNotFoundError:
                pass
        with self._lock:
            self._stage = (number, count, name, time.time())

    def finish(self, note: str) -> None:
        with self._lock:
            number, count, name, started = self._stage
            self._stage = None
        self.say(f"[{number:>2}/{count}] {name:<10} {note}  ({_duration(time.time() - started)})")

    def _redraw(self) -> None:
        last_print = 0.0
        while not self._stop.wait(0.5):
            with self._lock:
                stage = self._stage
            if stage is None:
                continue
            now = time.time()
            line = stage_line(*stage, progress.read(self.progress_path) if self.progress_path else None, now)
            if self.live:
                with self._lock:
                    self.out.write("\r\033[K" + line[:200])
            elif now - last_print >= 30:  # a log-friendly heartbeat where the line cannot be redrawn
                last_print = now
                self.say(line)
