"""What SFT and DPO share: the job config, the method interface, pre-flight checks (no Ray here).

A training method (sft.SFT, dpo.DPO) owns its config, its examples, its tokenising, its token
columns and its TRL trainer; ray_loop runs any method under Ray Train. The checks run in the
driver before any Ray worker starts and raise TrainConfigError, whose message starts with the
config field to change and ends with the fix:

    load_tokenizer_checked()   the model (or sft_model) loads: AutoConfig + AutoTokenizer
    check_split()              <data>/<split>.parquet exists, has rows, and every row gives valid
                               examples for the training type (templates errors, e.g. a row
                               without the persona that type needs); a sample tokenises within
                               max_length

trl_arguments() maps a TrainConfig onto the TrainingArguments that SFTConfig and DPOConfig share.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from persona_ray.core.errors import UserError
from persona_ray.core import storage
from persona_ray.core.hardware import native_bf16
from persona_ray.core.models import resolve_model
from persona_ray.core.settings import Settings
from persona_ray.core.tracking import TrackingSettings, tracking_field
from persona_ray.dataset.splits import split_uri
from persona_ray.tailoring.templates import TRAINING_TYPES

if TYPE_CHECKING:
    from persona_ray.tailoring.ray_loop import WorkerPlan


class TrainConfigError(UserError):
    """A training job cannot start; `field` names the config field to change, the message the fix."""

    def __init__(self, field: str, problem: str, fix: str):
        super().__init__(f"{field}: {problem}. Fix: {fix}")
        self.field = field


# ---------------------------------------------------------------------------------------------
# Configs shared by both methods.

class LoraSettings(Settings):
    """The LoRA adapter trained on top of the (frozen) model."""

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, ge=1, description="adapter scaling (lora_alpha)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      description="modules that get an adapter")

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), task_type="CAUSAL_LM")


class TrainConfig(Settings):
    """Fields of every training job. `data` is an augmented folder (local or s3://) holding
    <split>.parquet files written by `persona-ray augment`; `output` is Ray Train's storage path."""

    data: str = Field(description="augmented folder (output of `persona-ray augment`), local or s3://")
    train_split: str = Field(description="split to train on")
    val_split: str | None = Field(description="split to evaluate on; none: no evaluation")
    training_type: Literal[TRAINING_TYPES] = Field(  # type: ignore[valid-type]
        "all", description="chosen (P_C -> r_C), rejected (P_R -> r_R), all (both), none (no persona: plain baseline)")
    output: str = Field(description="Ray Train storage: folder or s3:// prefix; the run is <output>/<name>/")
    name: str | None = Field(None, description="run folder under output; default <method>-<type>-<UTC time>")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel)")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs per worker; also a CPU worker's torch threads")
    use_gpu: bool = Field(False, description="one GPU per worker")
    bf16: bool | Literal["auto"] = Field(
        False, description="bfloat16 mixed precision (autocast); auto: on where the worker's device has bf16 "
        "instructions (GPU: Ampere or later; CPU: avx512_bf16, AMX), off elsewhere, where it is slower")
    max_length: int = Field(512, ge=2, description="tokens per example; the prompt is cut from the left")
    learning_rate: float = Field(1e-4, gt=0, description="peak learning rate")
    lr_scheduler: str = Field("linear", description="any transformers scheduler name")
    warmup_steps: int = Field(0, ge=0, description="learning-rate warm-up steps")
    epochs: int = Field(1, ge=1, description="passes over the training split")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (overrides epochs)")
    per_device_batch_size: int = Field(4, ge=1, description="examples per worker per step")
    gradient_accumulation: int = Field(1, ge=1, description="batches accumulated per optimizer step")
    gradient_checkpointing: bool = Field(False, description="trade compute for memory (TRL's default is on: "
                                         "slower, only worth it for big models)")
    seed: int = Field(0, description="training seed")
    lora: LoraSettings = LoraSettings()
    tracking: TrackingSettings = tracking_field("also log to TensorBoard, MLflow or W&B through TRL's own "
                                                "integration, from rank 0 (core/tracking.py)")
    logging_steps: int = Field(1, ge=1, description="log every N steps to metrics.jsonl / metrics.csv")
    # ray.train.report waits until the controller has taken the previous report, and it polls every
    # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s): a report every step caps training at ~0.5 steps/s.
    ray_report_steps: int = Field(10, ge=1, description="also report logged steps to Ray every N steps (and "
                                  "always the last, evaluation and checkpoints); N steps should outlast 2 s")
    tokenize_in_driver_rows: int = Field(
        2000, ge=0, description="splits of at most this many rows are tokenised in the driver and handed to Ray "
        "Train as one block (a Ray Data task would spend longer starting than working); larger ones in Ray Data; "
        "0: always Ray Data")
    save_steps: int = Field(50, ge=1, description="a checkpoint every N steps, and always at the end")
    num_to_keep: int | None = Field(2, ge=1, description="checkpoints Ray Train keeps; none keeps all")
    max_failures: int = Field(0, ge=-1, description="worker-group restarts from the last checkpoint; -1: unlimited")
    evaluate: bool = Field(True, description="evaluate on val_split at the end (and every eval_steps when set)")
    eval_steps: int | Literal["epoch"] | None = Field(
        None, description="also evaluate every N steps, or once per epoch ('epoch'); none: only at the end")
    keep_best: bool = Field(False, description="return the checkpoint with the lowest validation loss instead of "
                            "the last: a checkpoint is saved at every evaluation and Ray ranks them by eval_loss "
                            "(the ranking survives restarts); needs eval_steps")

    @model_validator(mode="after")
    def _best_needs_evaluations(self):
        if self.keep_best and not (self.evaluate and self.val_split and self.eval_steps):
            raise ValueError("keep_best: choosing the best checkpoint needs evaluations during training; "
                             "set evaluate: true, a val_split and eval_steps (a number or 'epoch')")
        return self


class TrainingMethod:
    """What one training method owns; ray_loop runs any of them the same way.

    name            "sft" | "dpo" (run names, logs)
    model_field     the config field naming the model training starts from
    token_columns   tokenised Ray Data column -> the key TRL's collator reads
    """

    name: str
    model_field: str
    token_columns: dict[str, str]

    def examples(self, row: dict, training_type: str) -> list[dict]:
        raise NotImplementedError

    def tokenize(self, example: dict, tokenizer, max_length: int) -> dict:
        raise NotImplementedError

    def build_trainer(self, plan: WorkerPlan, output_dir: str):
        """The TRL trainer on a one-row placeholder dataset; ray_loop swaps in the worker's shard."""
        raise NotImplementedError

    def check(self, cfg: TrainConfig) -> tuple[str, int]:
        """Pre-flight checks (no Ray): (resolved model path, train rows); TrainConfigError otherwise."""
        model_path, tokenizer = load_tokenizer_checked(self.model_field, getattr(cfg, self.model_field))
        return model_path, check_splits(cfg, self, tokenizer)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# ---------------------------------------------------------------------------------------------
# Pre-flight checks (driver, before any Ray worker starts).

def _looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id ("name" or "org/name")."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or os.path.exists(path)


def load_tokenizer_checked(field: str, name_or_path: str):
    """resolve_model + AutoConfig + AutoTokenizer, or TrainConfigError naming `field`."""
    from transformers import AutoConfig, AutoTokenizer

    fix = "give a local model folder (config.json + tokenizer files), 'tiny', or a hub id cached offline"
    path = resolve_model(name_or_path)
    if _looks_local(path) and not os.path.isdir(os.path.expanduser(path)):
        raise TrainConfigError(field, f"model folder {path!r} does not exist", fix)
    try:
        AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # noqa: BLE001 - any load failure is a config problem here
        raise TrainConfigError(field, f"cannot load model {path!r} ({type(err).__name__}: {err})", fix) from None
    if not tokenizer.eos_token:
        raise TrainConfigError(field, f"the tokenizer of {path!r} has no EOS token", "use a tokenizer with one")
    return path, tokenizer


def check_split(cfg: TrainConfig, method: TrainingMethod, field: str, split: str, tokenizer,
                required_rows: bool) -> int:
    """Row count of a split after checking that the file exists, has rows, and every row gives
    valid examples for cfg.training_type (templates errors, e.g. a missing persona)."""
    uri = split_uri(cfg.data, split)
    if not storage.exists(uri):
        present = sorted(os.path.basename(u)[: -len(".parquet")] for u in storage.list_files(cfg.data, (".parquet",)))
        raise TrainConfigError(field, f"split file {uri} does not exist (splits there: {present or 'none'})",
                               "run `persona-ray augment` into `data`, or name an existing split")
    rows = storage.read_parquet(uri).to_pylist()
    if not rows:
        if required_rows:
            raise TrainConfigError(field, f"split file {uri} has no rows",
                                   "point at a split with data (check the augment manifest's split counts)")
        return 0
    problems, examples = [], []
    for row in rows:
        try:
            examples.extend(method.examples(row, cfg.training_type))
        except ValueError as err:
            problems.append(str(err))
    if problems:
        fix = ("re-run augmentation so every row has both personas, or use training_type 'none' (no persona)"
               if cfg.training_type != "none" else "drop rows without a prompt or response")
        raise TrainConfigError("training_type", f"{len(problems)} of {len(rows)} rows of {uri} cannot be used for "
                               f"training type {cfg.training_type!r}, e.g. {problems[0]}", fix)
    for example in examples[:64]:  # the whole split is tokenised in Ray Data; catch a too small max_length now
        try:
            method.tokenize(example, tokenizer, cfg.max_length)
        except ValueError as err:
            raise TrainConfigError("max_length", f"{uri}: {err}", "raise max_length") from None
    return len(rows)


def check_splits(cfg: TrainConfig, method: TrainingMethod, tokenizer) -> int:
    """The train split must have rows; the val split (when evaluating) must at least be valid."""
    rows = check_split(cfg, method, "train_split", cfg.train_split, tokenizer, required_rows=True)
    if cfg.val_split and cfg.evaluate:
        check_split(cfg, method, "val_split", cfg.val_split, tokenizer, required_rows=False)
    return rows


def use_bf16(cfg: TrainConfig) -> bool:
    """`bf16: auto` decided where the worker runs (core/hardware.py)."""
    return native_bf16(cfg.use_gpu) if cfg.bf16 == "auto" else cfg.bf16


def trl_arguments(cfg: TrainConfig, plan: WorkerPlan, output_dir: str) -> dict[str, Any]:
    """TrainingArguments shared by SFTConfig and DPOConfig (set explicitly: TRL 1.16 defaults to
    bf16=True, even on CPU, and to gradient_checkpointing=True). Steps come from the driver's
    plan: max_steps, save_steps and eval_steps (evaluations during training; transformers also
    evaluates at the last step)."""
    max_steps = plan.max_steps
    evaluation = {"eval_strategy": "steps", "eval_steps": plan.eval_steps} if plan.eval_steps else {}
    return dict(
        output_dir=output_dir, per_device_train_batch_size=cfg.per_device_batch_size,
        per_device_eval_batch_size=cfg.per_device_batch_size, gradient_accumulation_steps=cfg.gradient_accumulation,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_steps,
        max_steps=max_steps, max_length=cfg.max_length, seed=cfg.seed, bf16=use_bf16(cfg), use_cpu=not cfg.use_gpu,
        gradient_checkpointing=cfg.gradient_checkpointing, logging_steps=cfg.logging_steps,
        save_strategy="steps", save_steps=plan.save_steps, save_total_limit=1, report_to=[], disable_tqdm=True,
        dataloader_num_workers=0, ddp_find_unused_parameters=False, **evaluation,
    )

