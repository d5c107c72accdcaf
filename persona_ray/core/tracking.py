"""Experiment tracking: a job's parameters and numbers also go to TensorBoard, MLflow or W&B.

    tracking: {backend: mlflow, uri: file:/runs/mlruns, experiment: personas}   # in any job's YAML

    log_job_run(cfg.tracking, "judge", cfg, {"PT-DPO vs DPO/gold-chosen/p_win": 0.61, ...})
    report_to, env = trainer_tracking(cfg.tracking, run_name, "sft")          # for TRL's report_to

Every job writes its own files (manifest.json, metrics.jsonl, pairwise.json) whatever is set here;
a tracker is a second copy for the tools researchers compare runs in. One job is one tracked run:
its config flattened into parameters ("engine.model": "tiny"), its summary numbers as metrics, its
stage and job id as tags. A pipeline run is one MLflow parent run with a child run per stage
(`parent_run_id`, set by the pipeline), one W&B group (`group`), or one TensorBoard folder with a
sub-folder per stage.
Training hands the same settings to TRL's own integrations (`report_to`) on rank 0 only, so
losses, learning rates and DPO's reward margins and accuracies arrive step by step.

Each backend has a file mode that needs no server: TensorBoard event files in a folder, MLflow's
file store (`file:/abs/path`), W&B offline runs (the default here; `wandb sync` uploads them, and
WANDB_MODE=online with an API key logs live). Only names and numbers are logged, never prompts or
personas.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Literal

from pydantic import BaseModel, Field

from persona_ray.core.settings import Settings

BACKENDS = ("none", "tensorboard", "mlflow", "wandb")
MAX_PARAM_CHARS = 500  # MLflow refuses longer parameter values


class TrackingSettings(Settings):
    """Where a job's parameters and numbers are also logged (its own files are always written)."""

    backend: Literal[BACKENDS] = Field(  # type: ignore[valid-type]
        "none", description="none, tensorboard (event files under uri), mlflow (a run in uri's tracking store) or "
                            "wandb (a W&B run, offline under uri unless $WANDB_MODE says online)")
    uri: str | None = Field(None, description="tensorboard: the log folder; mlflow: the tracking URI "
                            "(file:/abs/path for a local file store, or http://host:5000); wandb: the folder "
                            "runs are written to; needed unless none")
    experiment: str = Field("persona-ray", description="MLflow experiment / W&B project (TensorBoard: a "
                            "sub-folder of uri)")
    run_name: str | None = Field(None, description="the run's name; default <stage>-<job id>")
    tags: dict[str, str] = Field(default_factory=dict, description="extra tags on every run")
    parent_run_id: str | None = Field(None, description="MLflow: the parent run (the pipeline sets it; each stage "
                                      "is a child run)")
    group: str | None = Field(None, description="W&B: the run group (the pipeline sets it to its run folder's name)")

    def model_post_init(self, context: Any) -> None:
        if self.backend != "none" and not self.uri:
            raise ValueError(f"tracking.uri: backend {self.backend} needs a uri (a log folder for tensorboard or "
                             "wandb, a tracking URI such as file:/abs/mlruns for mlflow)")

    @property
    def on(self) -> bool:
        return self.backend != "none"


def tracking_field(description: str = "also log the config and the summary numbers to TensorBoard, MLflow or "
                                      "W&B (core/tracking.py)"):
    """The `tracking` field of a job config."""
    return Field(default_factory=TrackingSettings, description=description)


def flat_params(config: BaseModel | dict, prefix: str = "") -> dict[str, str]:
    """{"engine.model": "tiny", ...}: a config as flat string parameters (long values cut)."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    params: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            params.update(flat_params(value, name + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            params[name] = text[:MAX_PARAM_CHARS]
    return params


def metric_name(name: str) -> str:
    """A name every backend takes: letters, digits, _ - . / and spaces; anything else becomes _."""
    return re.sub(r"[^\w\-./ ]", "_", name).strip() or "_"


def flat_metrics(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers in a (nested) summary, by slash-joined name; text and lists of text are left out."""
    metrics: dict[str, float] = {}
    for key, value in values.items():
        name = metric_name(f"{prefix}{key}")
        if isinstance(value, (int, float)):  # bool too: True is 1.0
            metrics[name] = float(value)
        elif isinstance(value, dict):
            metrics.update(flat_metrics(value, name + "/"))
    return metrics


def _tags(settings: TrackingSettings, stage: str) -> dict[str, str]:
    from persona_ray.core.logs import job_id

    tags = {**settings.tags, "stage": stage, "job_id": job_id()}
    if settings.parent_run_id:
        tags["mlflow.parentRunId"] = settings.parent_run_id  # how MLflow nests a run under another
    return tags


def run_name(settings: TrackingSettings, stage: str) -> str:
    from persona_ray.core.logs import job_id

    return settings.run_name or f"{stage}-{job_id()}"


def tensorboard_dir(settings: TrackingSettings, name: str) -> str:
    return os.path.join(settings.uri, settings.experiment, name)


def log_job_run(settings: TrackingSettings, stage: str, config: BaseModel | dict, metrics: dict[str, float],
                name: str | None = None) -> str | None:
    """Log one job as one run: config as parameters, summary numbers as metrics. Returns the MLflow
    run id (None for tensorboard / none)."""
    if not settings.on:
        return None
    name = name or run_name(settings, stage)
    params = flat_params(config)
    if settings.backend == "tensorboard":
        from tensorboardX import SummaryWriter

        with SummaryWriter(logdir=tensorboard_dir(settings, name)) as writer:
            writer.add_text("config", _config_text(params))
            writer.add_text("tags", json.dumps(_tags(settings, stage)))
            for key, value in metrics.items():
                writer.add_scalar(f"{stage}/{key}", value, 0)
        return None
    if settings.backend == "wandb":
        run = _wandb_init(settings, stage, name, params)
        run.log(metrics)
        run.finish()
        return None
    client = _mlflow_client(settings)
    run = client.create_run(_experiment_id(client, settings.experiment), run_name=name, tags=_tags(settings, stage))
    _mlflow_log(client, run.info.run_id, params, metrics)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def start_parent_run(settings: TrackingSettings, name: str, config: BaseModel | dict,
                     resume_id: str | None = None) -> str | None:
    """The pipeline's own MLflow run (its children are the stages); an existing id is reused, so a
    resumed pipeline stays one experiment run. None for tensorboard / none."""
    if settings.backend != "mlflow":
        return None
    if resume_id:
        return resume_id
    client = _mlflow_client(settings)
    run = client.create_run(_experiment_id(client, settings.experiment), run_name=name,
                            tags={**settings.tags, "stage": "pipeline"})
    _mlflow_log(client, run.info.run_id, flat_params(config), {})
    return run.info.run_id


def end_parent_run(settings: TrackingSettings, run_id: str | None, metrics: dict[str, float]) -> None:
    if settings.backend != "mlflow" or not run_id:
        return
    client = _mlflow_client(settings)
    _mlflow_log(client, run_id, {}, metrics)
    client.set_terminated(run_id)


def trainer_tracking(settings: TrackingSettings, name: str, stage: str) -> tuple[list[str], dict[str, str]]:
    """(TRL report_to, environment for its integration) for the worker that logs (rank 0)."""
    if settings.backend == "tensorboard":
        return ["tensorboard"], {"TENSORBOARD_LOGGING_DIR": tensorboard_dir(settings, name)}
    if settings.backend == "wandb":
        tags = ",".join(f"{k}:{v}" for k, v in _tags(settings, stage).items())
        return ["wandb"], {"WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "WANDB_DIR": settings.uri,
                           "WANDB_PROJECT": settings.experiment, "WANDB_JOB_TYPE": stage, "WANDB_TAGS": tags,
                           **({"WANDB_RUN_GROUP": settings.group} if settings.group else {})}
    if settings.backend == "mlflow":
        return ["mlflow"], {"MLFLOW_TRACKING_URI": settings.uri, "MLFLOW_EXPERIMENT_NAME": settings.experiment,
                            "MLFLOW_TAGS": json.dumps(_tags(settings, stage)), "MLFLOW_FLATTEN_PARAMS": "TRUE",
                            **_file_store_env(settings.uri)}
    return [], {}


def config_params_callback(settings: TrackingSettings, config: BaseModel, evaluates_after_training: bool):
    """A TrainerCallback, added after TRL's integration, that puts the job config (as `job.*`
    parameters) into the run the integration opened; with MLflow it also keeps the evaluation that
    follows training (ray_loop) in that run: the integration ends its run when training ends, and a
    metric logged after that would open a new, unnamed run."""
    from transformers import TrainerCallback

    params = flat_params(config, "job.")

    class JobConfigParams(TrainerCallback):
        def __init__(self):
            self.run_id: str | None = None
            self.reopened = False

        def on_train_begin(self, args, state, control, **kwargs):
            if settings.backend == "mlflow":
                import mlflow

                if mlflow.active_run() is not None:
                    self.run_id = mlflow.active_run().info.run_id
                    mlflow.log_params(params)
            elif settings.backend == "wandb":
                import wandb

                if wandb.run is not None:
                    wandb.run.config.update(params, allow_val_change=True)
            elif settings.backend == "tensorboard":
                from tensorboardX import SummaryWriter

                with SummaryWriter(logdir=os.environ["TENSORBOARD_LOGGING_DIR"]) as writer:
                    writer.add_text("config", _config_text(params))

        def on_train_end(self, args, state, control, **kwargs):
            # W&B's run stays open for the evaluation that follows; it must be finished before Ray
            # ends this worker, or an offline run may lose its last records.
            if settings.backend == "wandb" and not evaluates_after_training:
                _wandb_finish()
            if settings.backend == "mlflow" and evaluates_after_training and self.run_id:
                import mlflow

                if mlflow.active_run() is None:
                    mlflow.start_run(run_id=self.run_id)
                    self.reopened = True

        def on_evaluate(self, args, state, control, **kwargs):
            if settings.backend == "wandb" and evaluates_after_training and state.global_step >= state.max_steps:
                _wandb_finish()
            if self.reopened:
                import mlflow

                mlflow.end_run()
                self.reopened = False

    return JobConfigParams()


def _config_text(params: dict[str, str]) -> str:
    """Parameters as TensorBoard text (indented: shown as a code block)."""
    return "\n".join(f"    {k}: {v}" for k, v in sorted(params.items()))


def _mlflow_log(client, run_id: str, params: dict[str, str], metrics: dict[str, float]) -> None:
    """Parameters and metrics (step 0) into an MLflow run, in batches MLflow accepts (at most 100
    parameters and 1000 metrics a call)."""
    import time

    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    items = sorted(params.items())
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[start:start + 100]])
    metric_items = sorted(metrics.items())
    for start in range(0, len(metric_items), 1000):
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metric_items[start:start + 1000]])


def _wandb_init(settings: TrackingSettings, stage: str, name: str, params: dict[str, str]):
    import wandb

    os.makedirs(settings.uri, exist_ok=True)
    return wandb.init(mode=os.environ.get("WANDB_MODE", "offline"), dir=settings.uri, project=settings.experiment,
                      name=name, group=settings.group, job_type=stage, config=params, reinit="create_new",
                      tags=[f"{k}:{v}" for k, v in _tags(settings, stage).items()])


def _wandb_finish() -> None:
    import wandb

    if wandb.run is not None:
        wandb.run.finish()


def _mlflow_client(settings: TrackingSettings):
    from mlflow.tracking import MlflowClient

    os.environ.update(_file_store_env(settings.uri))
    return MlflowClient(tracking_uri=settings.uri)


def _file_store_env(uri: str) -> dict[str, str]:
    # MLflow 3 refuses its file store unless told it is wanted; a file: URI says so here.
    return {"MLFLOW_ALLOW_FILE_STORE": "true"} if uri.startswith("file:") else {}


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another job created it first
        return client.get_experiment_by_name(name).experiment_id
