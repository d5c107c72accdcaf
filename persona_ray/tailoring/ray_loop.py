"""The Ray side of training, the same for every method: Ray Data input, the per-worker loop,
TorchTrainer.fit() and the summary.

The methods (sft.SFT, dpo.DPO) only know TRL: each owns its examples, tokenising, token columns
and trainer builder (base.TrainingMethod). run_training(method, cfg) runs any of them:

    driver   tokenized_split()      Ray Data: read <data>/<split>.parquet, tokenise into TRL's format,
                                    shuffle the training examples once (seeded), materialize(); a
                                    small split (tokenize_in_driver_rows) is tokenised in the driver
             run_training()         check, plan, TorchTrainer(...).fit(), then a summary from the files below
    worker   run_worker(plan)       the per-worker loop (a typed WorkerPlan): the method's TRL trainer
                                    with a placeholder dataset, then
                                    the Ray shard as its train_dataset (collated by TRL's collator),
                                    prepare_trainer, callbacks, resume from ray.train.get_checkpoint(),
                                    train, evaluate, write the run files

Run folder (local or s3://, <output>/<name>/), next to Ray Train's own checkpoint_* folders:
    metrics.jsonl / metrics.csv    one line per logged step (loss, grad_norm, learning_rate, and for
                                   DPO rewards/margins, rewards/accuracies, ...), kept across restarts
    workers/rank-<r>.json          per worker: rows delivered, the (pair_id, persona_side) of every
                                   example delivered, step timestamps, the step it resumed from
    _fault_injected                written by the test fault hook before it kills rank 0

Sharding: Ray Train splits the tokenised dataset with streaming_split(equal=True), so every worker
gets floor(rows / num_workers) rows per epoch (up to num_workers - 1 rows are left out when rows
do not divide evenly). max_steps = epochs * (batches per worker // gradient_accumulation).
Restarts: with FailureConfig(max_failures) Ray restarts the worker group after a worker dies; the
loop resumes the TRL trainer from the latest reported checkpoint (optimizer, scheduler, step) and
skips the batches that step had consumed.
Best checkpoint (keep_best): evaluations every eval_steps (or once per epoch), a checkpoint saved
at each, Ray's CheckpointConfig ranks them by eval_loss (its checkpoint manager keeps the best
num_to_keep plus the latest, and writes its state to the run folder, so the ranking survives
restarts); the summary's checkpoint is the lowest eval_loss among those kept.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from persona_ray.core import progress, storage
from persona_ray.dataset.splits import split_uri
from persona_ray.tailoring.base import TrainConfig, TrainConfigError, TrainingMethod

log = logging.getLogger(__name__)

FAIL_AT_STEP_ENV = "PERSONA_RAY_TRAIN_FAIL_AT_STEP"  # test hook: rank 0 dies once at this step
FAULT_MARKER = "_fault_injected"
RAY_CHECKPOINT_SUBDIR = "checkpoint"  # RayTrainReportCallback.CHECKPOINT_NAME


# ---------------------------------------------------------------------------------------------
# Ray Data input.

@lru_cache(maxsize=4)
def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


class _Tokenize:
    """Ray Data batch function: augmented rows -> tokenised examples (+ pair_id, persona_side)."""

    def __init__(self, method: TrainingMethod, training_type: str, tokenizer_path: str, max_length: int):
        self.method, self.training_type = method, training_type
        self.tokenizer_path, self.max_length = tokenizer_path, max_length

    def __call__(self, batch: pa.Table) -> pa.Table:
        tokenizer = _tokenizer(self.tokenizer_path)
        columns = self.method.token_columns
        out: dict[str, list] = {"pair_id": [], "persona_side": [], **{c: [] for c in columns}}
        for row in batch.to_pylist():
            for example in self.method.examples(row, self.training_type):
                tokens = self.method.tokenize(example, tokenizer, self.max_length)
                out["pair_id"].append(str(example["pair_id"]))
                out["persona_side"].append(example["persona_side"])
                for column in columns:
                    out[column].append(tokens[column])
        schema = pa.schema([("pair_id", pa.string()), ("persona_side", pa.string()),
                            *[(c, pa.list_(pa.int32())) for c in columns]])
        return pa.Table.from_pydict(out, schema=schema)


def tokenized_split(uri: str, method: TrainingMethod, training_type: str, tokenizer_path: str, max_length: int,
                    shuffle_seed: int | None = None, in_driver_rows: int = 0):
    """A materialized Ray dataset of TRL-format examples read from one split file.

    With `shuffle_seed` the examples are shuffled once, before materializing: split files keep the
    rows of one prompt together (and `all` puts a pair's two sides side by side), and a run that
    stops before the end of an epoch would otherwise train on the first prompts only. The order is
    fixed by the seed and the same every epoch, so a restarted worker skips the batches it consumed.

    A split of at most `in_driver_rows` rows is tokenised here, in the driver, and handed to Ray as
    one block: a Ray Data read, map and shuffle for a few dozen rows took 10-50 s on a busy 2-core
    machine (worker processes starting and loading the tokenizer), the driver takes about a second."""
    import pyarrow.parquet as pq
    import ray.data

    fs, path = storage.filesystem(uri)
    small = False
    if in_driver_rows:
        with fs.open_input_file(path) as handle:
            small = pq.ParquetFile(handle).metadata.num_rows <= in_driver_rows
    if small:
        examples = _Tokenize(method, training_type, tokenizer_path, max_length)(storage.read_parquet(uri))
        if shuffle_seed is not None:
            import numpy as np

            examples = examples.take(np.random.default_rng(shuffle_seed).permutation(examples.num_rows))
        return ray.data.from_arrow(examples)
    ds = ray.data.read_parquet(path, filesystem=fs)
    ds = ds.map_batches(_Tokenize(method, training_type, tokenizer_path, max_length), batch_format="pyarrow")
    if shuffle_seed is not None:
        ds = ds.random_shuffle(seed=shuffle_seed)
    return ds.materialize()


# ---------------------------------------------------------------------------------------------
# Files in the run folder, through a picklable pyarrow filesystem (works on workers too).

class RunFiles:
    def __init__(self, output: str, name: str):
        self.name = name
        self.uri = storage.join(output, name)
        self.fs, self.root = storage.filesystem(self.uri)

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def write(self, rel: str, data: bytes) -> None:
        path = self._path(rel)
        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.create_dir(os.path.dirname(path), recursive=True)
        with self.fs.open_output_stream(path) as handle:
            handle.write(data)

    def read(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self._path(rel)) as handle:
            return handle.read()

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self._path(rel)).type != pafs.FileType.NotFound

    def uri_of(self, rel: str) -> str:
        return storage.join(self.uri, rel)


def metrics_csv(records: list[dict]) -> bytes:
    columns = sorted({k for r in records for k in r}, key=lambda k: (k != "step", k))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue().encode()


# ---------------------------------------------------------------------------------------------
# Worker side.

def _make_collate(collator, columns: dict[str, str]):
    from ray.data.collate_fn import NumpyBatchCollateFn

    class TRLCollate(NumpyBatchCollateFn):
        """Ray numpy batch -> TRL's own collator (padding, masks); remembers the examples it saw."""

        def __init__(self):
            self.seen: list[list[str]] = []

        def __call__(self, batch):
            # Ragged token columns arrive as object arrays of numpy arrays: to lists, or TRL's
            # DPO collator would add prompt and completion arrays element-wise instead of joining.
            examples = [{key: batch[col][i].tolist() for col, key in columns.items()}
                        for i in range(len(batch["pair_id"]))]
            self.seen.extend([p, s] for p, s in zip(batch["pair_id"].tolist(), batch["persona_side"].tolist()))
            return collator(examples)

    return TRLCollate()


def _callbacks(files: RunFiles, rank: int, fail_at_step: int | None, report_steps: int):
    import ray.train
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """Reports logs to Ray and keeps step times. ray.train.report is collective: every rank
        decides from the same step numbers, so all ranks report the same logs."""

        def __init__(self):
            self.step_end_times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.step_end_times.append(time.perf_counter())
            if rank == 0:
                progress.update(state.global_step, state.max_steps, "steps")

        def on_log(self, args, state, control, logs=None, **kwargs):
            metrics = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            step_log = "loss" in metrics
            if not step_log or state.global_step % report_steps == 0 or state.global_step >= state.max_steps:
                ray.train.report({"step": state.global_step, **metrics})

    class FaultCallback(TrainerCallback):
        """Test hook: rank 0 exits hard once at `fail_at_step`, on the first attempt only."""

        def on_step_end(self, args, state, control, **kwargs):
            if rank == 0 and fail_at_step is not None and state.global_step == fail_at_step \
                    and not files.exists(FAULT_MARKER):
                files.write(FAULT_MARKER, json.dumps({"step": state.global_step, "time": time.time()}).encode())
                # Give the controller time to register the last reported checkpoint (it polls every ~2 s).
                time.sleep(5)
                os._exit(1)

    return MetricsCallback(), FaultCallback()


def _tracking_callbacks(cfg: TrainConfig, plan: "WorkerPlan", rank: int, name: str) -> list:
    """Rank 0 only: TRL's own TensorBoard / MLflow / W&B integration (what report_to would add),
    then the job config as parameters of the same run, named `name`."""
    from transformers.integrations import get_reporting_integration_callbacks

    from persona_ray.core.tracking import config_params_callback, trainer_tracking

    if rank != 0 or not cfg.tracking.on:
        return []
    report_to, env = trainer_tracking(cfg.tracking, name, plan.method.name)
    os.environ.update(env)  # read by the integration when training begins
    return [*(cls() for cls in get_reporting_integration_callbacks(report_to)),
            config_params_callback(cfg.tracking, cfg,
                                   evaluates_after_training=plan.evaluate and not plan.eval_steps)]


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker needs, decided on the driver."""

    cfg: TrainConfig
    method: TrainingMethod
    model_path: str  # the resolved model training starts from
    files: RunFiles
    max_steps: int
    save_steps: int
    eval_steps: int | None  # evaluations during training (None: once at the end)
    evaluate: bool  # a val shard exists for every worker
    fail_at_step: int | None  # test hook (FAIL_AT_STEP_ENV)


def run_worker(plan: WorkerPlan) -> None:
    """Per-worker training loop: the method's TRL trainer, fed this worker's shard, trained
    (resuming if Ray has a checkpoint) and evaluated; then the run files are written."""
    import ray.train
    import torch
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

    context = ray.train.get_context()
    rank = context.get_world_rank()
    cfg, files = plan.cfg, plan.files
    if not cfg.use_gpu:
        torch.set_num_threads(cfg.cpus_per_worker)
    workdir = tempfile.mkdtemp(prefix=f"persona-ray-{plan.method.name}-rank{rank}-")
    try:
        # --- the trainer, on this worker's shard -------------------------------------------
        trainer = plan.method.build_trainer(plan, workdir)
        collate = _make_collate(trainer.data_collator, plan.method.token_columns)
        shard = ray.train.get_dataset_shard("train")
        trainer.train_dataset = shard.iter_torch_batches(batch_size=cfg.per_device_batch_size, collate_fn=collate)
        if plan.evaluate:
            eval_collate = _make_collate(trainer.data_collator, plan.method.token_columns)
            trainer.eval_dataset = ray.train.get_dataset_shard("val").iter_torch_batches(
                batch_size=cfg.per_device_batch_size, collate_fn=eval_collate)
        trainer = prepare_trainer(trainer)
        metrics_cb, fault_cb = _callbacks(files, rank, plan.fail_at_step, cfg.ray_report_steps)
        trainer.args.run_name = cfg.tracking.run_name or files.name  # the tracked run's name
        for callback in (RayTrainReportCallback(), metrics_cb, fault_cb,
                         *_tracking_callbacks(cfg, plan, rank, trainer.args.run_name)):
            trainer.add_callback(callback)

        # --- resume from Ray's last checkpoint, train, evaluate ------------------------------
        resume_dir, resumed_from = None, None
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            local = checkpoint.to_directory(os.path.join(workdir, "resume"))
            resume_dir = os.path.join(local, RAY_CHECKPOINT_SUBDIR)
            with open(os.path.join(resume_dir, "trainer_state.json")) as handle:
                resumed_from = json.load(handle)["global_step"]
        started = time.time()
        trainer.train(resume_from_checkpoint=resume_dir)
        if plan.evaluate and plan.eval_steps:  # transformers evaluated at the last step already
            eval_metrics = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), {})
        else:
            eval_metrics = trainer.evaluate() if plan.evaluate else {}

        # --- run files -------------------------------------------------------------------------
        if rank == 0:
            history = trainer.state.log_history
            files.write("metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history).encode())
            files.write("metrics.csv", metrics_csv(history))
        files.write(f"workers/rank-{rank}.json", json.dumps({
            "rank": rank, "world_size": context.get_world_size(), "rows_delivered": len(collate.seen),
            "examples": collate.seen, "resumed_from_step": resumed_from, "final_step": trainer.state.global_step,
            "started": started, "step_end_times": metrics_cb.step_end_times,
            "eval": {k: v for k, v in eval_metrics.items() if isinstance(v, (int, float))},
        }).encode())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # the trainer's local checkpoints; Ray keeps its own


# ---------------------------------------------------------------------------------------------
# Driver side.

def _storage_args(output: str) -> tuple[str, pafs.FileSystem | None]:
    """RunConfig storage_path (+ filesystem). S3 gets an explicit, picklable S3FileSystem built
    from the AWS_* variables of this process, so the controller and the workers reach the bucket
    even when the Ray cluster was started before those variables were set."""
    if storage.is_s3(output):
        fs, path = storage.filesystem(output)
        return path, fs
    return os.path.abspath(output), None


def plan_steps(cfg: TrainConfig, rows: int) -> dict[str, int]:
    rows_per_worker = rows // cfg.num_workers
    if rows_per_worker == 0:
        raise TrainConfigError("num_workers", f"{rows} tokenised examples cannot feed {cfg.num_workers} workers",
                               "use fewer workers or more data")
    batches = math.ceil(rows_per_worker / cfg.per_device_batch_size)
    steps_per_epoch = batches // cfg.gradient_accumulation
    if steps_per_epoch == 0:
        raise TrainConfigError("gradient_accumulation", f"each worker has only {batches} batches per epoch",
                               "lower gradient_accumulation or per_device_batch_size")
    max_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    eval_steps = steps_per_epoch if cfg.eval_steps == "epoch" else cfg.eval_steps
    # Ray ranks a checkpoint by the metrics reported with it: with keep_best every evaluation
    # saves, so each checkpoint carries its own eval_loss (never the one of an earlier step).
    save_steps = eval_steps if cfg.keep_best else cfg.save_steps
    return {"rows_per_worker": rows_per_worker, "batches_per_worker": batches, "max_steps": max_steps,
            "eval_steps": eval_steps if cfg.evaluate and cfg.val_split else None, "save_steps": save_steps}


def run_training(method: TrainingMethod, cfg: TrainConfig) -> dict[str, Any]:
    """Check the job, tokenise the splits in Ray Data, run TorchTrainer.fit() and summarise the run."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from persona_ray.core.ray_runtime import ensure_ray

    model_path, _ = method.check(cfg)
    ensure_ray()
    name = cfg.name or f"{method.name}-{cfg.training_type}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    train_ds = tokenized_split(split_uri(cfg.data, cfg.train_split), method, cfg.training_type, model_path,
                               cfg.max_length, shuffle_seed=cfg.seed, in_driver_rows=cfg.tokenize_in_driver_rows)
    plan = plan_steps(cfg, train_ds.count())
    datasets = {"train": train_ds}
    evaluate = False
    if cfg.evaluate and cfg.val_split:
        val_ds = tokenized_split(split_uri(cfg.data, cfg.val_split), method, cfg.training_type, model_path,
                                 cfg.max_length, in_driver_rows=cfg.tokenize_in_driver_rows)
        # Every worker needs at least one val batch, or the distributed evaluation waits forever.
        evaluate = val_ds.count() >= cfg.num_workers
        if evaluate:
            datasets["val"] = val_ds
        elif cfg.keep_best:
            raise TrainConfigError("keep_best", f"{cfg.val_split} has fewer examples than workers, so there is no "
                                   "validation loss to choose by", "add validation rows or use fewer workers")
        else:
            log.warning("%s: fewer val examples than workers; skipping evaluation", cfg.val_split)

    files = RunFiles(cfg.output, name)
    fail_at = os.environ.get(FAIL_AT_STEP_ENV)
    worker_plan = WorkerPlan(cfg=cfg, method=method, model_path=model_path, files=files,
                             max_steps=plan["max_steps"], save_steps=plan["save_steps"],
                             eval_steps=plan["eval_steps"] if evaluate else None, evaluate=evaluate,
                             fail_at_step=int(fail_at) if fail_at else None)
    ranking = {"checkpoint_score_attribute": "eval_loss", "checkpoint_score_order": "min"} if cfg.keep_best else {}
    storage_path, filesystem = _storage_args(cfg.output)
    trainer = TorchTrainer(
        partial(run_worker, worker_plan),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.num_to_keep, **ranking),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)),
        datasets=datasets,
    )
    log.info("%s: %s rows per worker x %d workers, %d steps -> %s", method.name, plan["rows_per_worker"],
             cfg.num_workers, plan["max_steps"], files.uri,
             extra={"stage": method.name, "rows_per_worker": plan["rows_per_worker"], "workers": cfg.num_workers,
                    "steps": plan["max_steps"]})
    result = trainer.fit()
    return summarize(files, result, cfg.num_workers, plan, keep_best=cfg.keep_best)


def best_by_eval_loss(best_checkpoints: list[tuple[Any, dict]]) -> tuple[Any, dict]:
    """The (checkpoint, metrics) with the lowest eval_loss; the later one on a tie."""
    ranked = [(c, m) for c, m in best_checkpoints if isinstance(m.get("eval_loss"), (int, float))]
    if not ranked:
        raise RuntimeError("keep_best: no saved checkpoint carries an eval_loss")
    return min(reversed(ranked), key=lambda item: item[1]["eval_loss"])


def summarize(files: RunFiles, result, num_workers: int, plan: dict, keep_best: bool = False) -> dict[str, Any]:
    workers = [json.loads(files.read(f"workers/rank-{r}.json")) for r in range(num_workers)]
    history = [json.loads(line) for line in files.read("metrics.jsonl").decode().splitlines() if line]
    losses = [h["loss"] for h in history if "loss" in h]

    def uri(checkpoint) -> str:
        return storage.S3_PREFIX + checkpoint.path.lstrip("/") if storage.is_s3(files.uri) else checkpoint.path

    chosen, best = result.checkpoint, None
    if keep_best:
        chosen, metrics = best_by_eval_loss(result.best_checkpoints or [])
        best = {"step": metrics.get("step"), "eval_loss": metrics["eval_loss"],
                "kept": [{"checkpoint": uri(c), "step": m.get("step"), "eval_loss": m.get("eval_loss")}
                         for c, m in result.best_checkpoints]}
    checkpoint = uri(chosen) if chosen else None
    return {
        "run": files.uri,
        "checkpoint": checkpoint,
        "best": best,
        "steps": workers[0]["final_step"],
        "planned_steps": plan["max_steps"],
        "final_loss": losses[-1] if losses else None,
        "rows_per_worker": [w["rows_delivered"] for w in workers],
        "resumed_from_step": workers[0]["resumed_from_step"],
        "fault_injected": files.exists(FAULT_MARKER),
        "eval": workers[0]["eval"],
        "metrics": files.uri_of("metrics.jsonl"),
        "metrics_csv": files.uri_of("metrics.csv"),
    }
