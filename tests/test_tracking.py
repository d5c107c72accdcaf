"""Experiment tracking (core/tracking.py): settings, names, and what each backend's own reader
reads back from a job's run (TensorBoard's EventAccumulator, MLflow's client on a file store).
Training and the judge log through the same code in test_train.py and test_generate_judge.py."""

from __future__ import annotations

import pytest

from persona_ray.core.tracking import TrackingSettings, flat_metrics, flat_params, log_job_run, metric_name
from persona_ray.evaluation.judge import Comparison, JudgeConfig


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of every event file under `folder`, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for events in sorted({p.parent for p in folder.rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return scalars


def mlflow_runs(uri: str, experiment: str = "persona-ray") -> list:
    import os

    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 reads its file store only when told to
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def wandb_runs(folder) -> list[dict]:
    """Every W&B run written under `folder` (offline): its name, group, tags, config and history rows,
    read from the run's own record file (a LevelDB-style log of wandb's protobuf Records)."""
    import json
    from pathlib import Path

    from wandb.proto import wandb_internal_pb2

    runs = []
    for path in sorted(Path(folder).rglob("run-*.wandb")):
        data, pos, block, chunk = path.read_bytes(), 7, 32768, b""  # 7: the ":W&B" file header
        run = {"history": [], "config": {}, "summary": {}}
        while pos + 7 <= len(data):
            if block - pos % block < 7:  # a block's tail too short for a record header is padding
                pos += block - pos % block
                continue
            length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
            chunk += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind not in (1, 4):  # a record split over blocks ends with kind 4 ("last")
                continue
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            kind_name = record.WhichOneof("record_type")
            if kind_name == "run":
                run.update(name=record.run.display_name, group=record.run.run_group, tags=list(record.run.tags),
                           job_type=record.run.job_type)
                run["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind_name == "config":
                run["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
            elif kind_name == "history":
                run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in record.history.item})
            elif kind_name == "exit":
                run["exit_code"] = record.exit.exit_code
        runs.append(run)
    return runs


def finished_wandb_runs(folder, count: int = 1, timeout: float = 60) -> list[dict]:
    """wandb_runs once `count` runs have their exit record: W&B's writer process may still be
    writing a moment after `finish()` returns."""
    import time

    deadline = time.time() + timeout
    while True:
        runs = wandb_runs(folder)
        if sum("exit_code" in run for run in runs) >= count or time.time() > deadline:
            return runs
        time.sleep(0.5)


def test_settings_names_and_flattening():
    with pytest.raises(ValueError, match="tracking.uri: backend mlflow needs a uri"):
        TrackingSettings(backend="mlflow")
    with pytest.raises(ValueError, match="backend"):
        TrackingSettings(backend="comet", uri="x")
    assert not TrackingSettings().on
    assert metric_name("PT-DPO vs DPO + persona in words (§5)/p_win") == "PT-DPO vs DPO _ persona in words __5_/p_win"
    assert flat_metrics({"a": 1, "b": {"c": 0.5, "d": "text", "e": True}, "f": [1, 2]}) == {
        "a": 1.0, "b/c": 0.5, "b/e": 1.0}
    params = flat_params(JudgeConfig(responses="r", data="d", output="o", comparisons=[Comparison(test="a", base="b")]))
    assert params["judge.sampling.max_tokens"] == "512" and params["responses"] == "r"
    assert params["comparisons"].startswith('[{"test": "a"')
    assert all(len(v) <= 500 for v in params.values())


def test_one_job_is_one_run_in_tensorboard_mlflow_and_wandb(tmp_path, monkeypatch):
    config = {"engine": {"model": "tiny", "sampling": {"max_tokens": 8}}, "output": "o"}
    metrics = {"counts/persona_records": 120.0, "throughput/valid_pct": 95.0}

    board = TrackingSettings(backend="tensorboard", uri=str(tmp_path / "tb"), run_name="demo/infer")
    assert log_job_run(board, "infer", config, metrics) is None
    assert tensorboard_scalars(tmp_path / "tb" / "persona-ray" / "demo" / "infer") == {
        "infer/counts/persona_records": [(0, 120.0)], "infer/throughput/valid_pct": [(0, 95.0)]}

    uri = f"file:{tmp_path / 'mlruns'}"
    flow = TrackingSettings(backend="mlflow", uri=uri, tags={"team": "personas"})
    run_id = log_job_run(flow, "infer", config, metrics)
    (run,) = mlflow_runs(uri)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.params["engine.model"] == "tiny" and run.data.params["engine.sampling.max_tokens"] == "8"
    assert run.data.metrics == metrics
    assert run.data.tags["stage"] == "infer" and run.data.tags["team"] == "personas" and run.data.tags["job_id"]
    assert run.info.run_name.startswith("infer-")

    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline unless the environment says otherwise
    bees = TrackingSettings(backend="wandb", uri=str(tmp_path / "wandb"), group="demo", run_name="demo/infer")
    log_job_run(bees, "infer", config, metrics)
    (run,) = finished_wandb_runs(tmp_path / "wandb")
    assert run["name"] == "demo/infer" and run["group"] == "demo" and run["job_type"] == "infer"
    assert "stage:infer" in run["tags"] and run["exit_code"] == 0
    assert run["config"]["engine.model"] == "tiny" and run["config"]["engine.sampling.max_tokens"] == "8"
    (row,) = run["history"]
    assert {k: row[k] for k in metrics} == metrics
