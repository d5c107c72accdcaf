"""Structured logs: --log-format json gives one JSON object a line with the job id, the command,
the stage and the counts a job passes along."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from persona_ray.cli import app
from persona_ray.core.logs import JsonFormatter, setup_logging


def test_json_lines_carry_job_command_and_extra_fields(monkeypatch, capsys):
    # Ray hands a submitted job's entrypoint its job config, the submission id in its metadata.
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                       json.dumps({"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_abc"}}))
    monkeypatch.setenv("PERSONA_RAY_JOB_ID", "")
    setup_logging("json", command="persona-ray infer")
    logging.getLogger("persona_ray.inference.infer").info("personas %d/%d", 10, 20,
                                                           extra={"stage": "infer", "records": 10, "pairs_per_s": 1.5})
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["message"] == "personas 10/20" and line["level"] == "INFO"
    assert line["job_id"] == "raysubmit_abc" and line["command"] == "persona-ray infer"
    assert line["stage"] == "infer" and line["records"] == 10 and line["pairs_per_s"] == 1.5
    setup_logging("text")
    logging.getLogger("x").info("plain")
    assert capsys.readouterr().err.strip().endswith("INFO x: plain")
    assert sum(getattr(h, "_persona_ray", False) for h in logging.getLogger().handlers) == 1  # replaced, not added
    with pytest.raises(ValueError, match="log format must be one of"):
        setup_logging("xml")


def test_exceptions_are_one_json_field():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = json.loads(JsonFormatter("c").format(record))
    assert line["message"] == "failed" and "RuntimeError: boom" in line["exception"]


def test_the_cli_writes_json_logs_when_asked(tmp_path, monkeypatch):
    for name in ("PERSONA_RAY_LOG_FORMAT", "RAY_JOB_CONFIG_JSON_ENV_VAR", "PERSONA_RAY_JOB_ID"):
        monkeypatch.setenv(name, "")  # empty = unset; the command's own settings are undone after the test
    result = CliRunner().invoke(app, ["--log-format", "json", "world", "build", "--output", str(tmp_path / "w"),
                                      "--max-prompts", "12"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
    stage = [x for x in lines if x.get("stage") == "build"]
    assert stage and stage[0]["command"] == "persona-ray world build" and stage[0]["job_id"].startswith("pr-")
    setup_logging("text")  # later tests log to the live stderr, not the runner's closed one
