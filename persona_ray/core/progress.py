"""Progress of the running job, for the pipeline's progress bar.

Jobs call `update(done, total, unit)` where they already count (personas written, responses
generated, judge answers, training steps). When $PERSONA_RAY_PROGRESS names a file, the latest
numbers are written there (atomically, so a reader never sees half a file); otherwise nothing
happens. The pipeline sets the variable before Ray starts, so Ray workers on this machine (the
training loop) report too; on a cluster their updates stay on their own node and are not shown.
"""

from __future__ import annotations

import json
import os
import time

PROGRESS_ENV = "PERSONA_RAY_PROGRESS"


def update(done: int, total: int, unit: str = "rows") -> None:
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump({"done": int(done), "total": int(total), "unit": unit, "time": time.time()}, handle)
        os.replace(tmp, path)
    except OSError:  # progress is a courtesy: never fail a job over it
        pass


def read(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None
