"""Experiment tracking (core/tracking.py): settings, names, and what each backend's own reader
reads back from a job's run (TensorBoard's EventAccumulator, MLflow's client on a file store).
Training and the judge log through the same code in test_train.py and test_generate_judge.py."""

from __future__ import annotations

import pytest

from persona_ray.core.tracking import TrackingSettings, flat_metrics, flat_params, log_job_run, metric_name
from persona_ray.evaluation.judge import Comparison, JudgeConfig
from tests.helpers import finished_wandb_runs, mlflow_runs, tensorboard_scalars


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


@pytest.mark.slow  # W&B starts its own service process (wandb-core)
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
