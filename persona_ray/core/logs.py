"""The driver's log lines: plain text for people, or JSON lines for a cluster's log collector.

    setup_logging(fmt, command)   text (default) or json; $PERSONA_RAY_LOG_FORMAT sets the default

A JSON line carries the time, level, logger, message, the job id (Ray's job submission id under
`ray job submit`, $PERSONA_RAY_JOB_ID, or one made up for this run) and the command, plus the
fields a job passes with `extra=` (stage, rows, quarantined, rates...), so a collector can index
and filter them. Ray workers' own lines reach the driver through Ray and are not reformatted.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from datetime import datetime, timezone

LOG_FORMAT_ENV = "PERSONA_RAY_LOG_FORMAT"
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def job_id() -> str:
    """The run's id: the submission id under `ray job submit` (Ray puts it in the job config it
    hands the entrypoint), else $PERSONA_RAY_JOB_ID, else one made up once per process."""
    try:
        submitted = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
        submission_id = (submitted.get("metadata") or {}).get("job_submission_id")
    except (ValueError, AttributeError):
        submission_id = None
    if submission_id:
        return str(submission_id)
    if not os.environ.get("PERSONA_RAY_JOB_ID"):
        os.environ["PERSONA_RAY_JOB_ID"] = f"pr-{uuid.uuid4().hex[:12]}"  # the same id for the rest of the run
    return os.environ["PERSONA_RAY_JOB_ID"]


class JsonFormatter(logging.Formatter):
    def __init__(self, command: str):
        super().__init__()
        self.command, self.job = command, job_id()

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name, "message": record.getMessage(),
                "job_id": self.job, "command": self.command}
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def setup_logging(fmt: str | None = None, command: str = "") -> None:
    """Log INFO and up to stderr in `fmt` (text or json; default $PERSONA_RAY_LOG_FORMAT, else text)."""
    fmt = fmt or os.environ.get(LOG_FORMAT_ENV) or "text"
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(command) if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_persona_ray", False)]:
        root.removeHandler(old)
    handler._persona_ray = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.INFO)
