"""Persona-tailoring training on Ray Train (SFT -> merge -> DPO), fault tolerance, config checks.

The Ray tests start TorchTrainer runs (~30 s of start-up each on a 2-core machine) with the tiny
model; the config tests need no Ray.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from persona_ray.core import storage
from persona_ray.dataset.augment import ROW_FIELDS
from tests.helpers import SAMPLE_PAIRS, read_jsonl

pytestmark = pytest.mark.slow

CHOSEN_PERSONA = "The user wants careful, detailed answers with the reasons behind them."
REJECTED_PERSONA = "The user wants very short answers."


def write_split(folder, split: str, n: int, offset: int = 0, **overrides) -> list[dict]:
    """An augmented split file made from the bundled sample pairs, with two simple personas."""
    rows = []
    for pair in read_jsonl(SAMPLE_PAIRS)[offset:offset + n]:
        row = {"pair_id": pair["id"], "prompt": pair["prompt"], "chosen": pair["chosen"],
               "rejected": pair["rejected"], "domain": pair["domain"], "source": pair["source"],
               "chosen_persona": CHOSEN_PERSONA, "rejected_persona": REJECTED_PERSONA}
        row.update(overrides)
        rows.append(row)
    schema = pa.schema([(f, pa.string()) for f in ROW_FIELDS])
    storage.write_parquet(pa.Table.from_pylist(rows, schema=schema), storage.join(str(folder), f"{split}.parquet"))
    return rows


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("augmented")
    write_split(folder, "sft_train", 16)
    write_split(folder, "sft_val", 4, offset=16)
    write_split(folder, "dpo_train", 8)
    write_split(folder, "dpo_val", 2, offset=16)
    return folder


@pytest.fixture(scope="module")
def sft_run(ray_local, tiny_model, data_dir, tmp_path_factory):
    from persona_ray.tailoring import SFTJobConfig, train_sft

    cfg = SFTJobConfig(data=str(data_dir), output=str(tmp_path_factory.mktemp("runs")), name="sft",
                       training_type="chosen", model=tiny_model, num_workers=2, max_length=256,
                       per_device_batch_size=4, learning_rate=1e-3, save_steps=1, tokenize_in_driver_rows=0,
                       tracking={"backend": "tensorboard", "uri": str(tmp_path_factory.mktemp("tensorboard"))})
    return cfg, train_sft(cfg)  # tokenised in Ray Data (the other runs here are small enough for the driver)


def test_a_small_split_tokenised_in_the_driver_gives_the_examples_ray_data_gives(ray_local, tiny_model, data_dir):
    from persona_ray.dataset.splits import split_uri
    from persona_ray.tailoring import SFT
    from persona_ray.tailoring.ray_loop import tokenized_split

    def examples(in_driver_rows: int, shuffle_seed: int | None) -> list[dict]:
        ds = tokenized_split(split_uri(str(data_dir), "sft_train"), SFT(), "all", tiny_model, 256,
                             shuffle_seed=shuffle_seed, in_driver_rows=in_driver_rows)
        return [{k: v.tolist() if hasattr(v, "tolist") else v for k, v in row.items()} for row in ds.take_all()]

    in_ray_data, in_driver = examples(0, None), examples(16, 0)  # Ray Data's own shuffle: sft_run's test
    key = lambda row: (row["pair_id"], row["persona_side"])  # noqa: E731
    assert len(in_driver) == 32 and sorted(in_driver, key=key) == sorted(in_ray_data, key=key)
    assert [key(r) for r in in_driver] != sorted(map(key, in_driver)), "the driver's examples are not shuffled"


def test_sft_two_workers_use_every_row_once_and_checkpoint(sft_run, data_dir):
    cfg, summary = sft_run
    files = storage.join(summary["run"], "workers")
    seen = [json.loads(storage.read_bytes(storage.join(files, f"rank-{r}.json")))["examples"] for r in (0, 1)]
    ids = [[pair_id for pair_id, side in rank] for rank in seen]
    expected = [r["pair_id"] for r in storage.read_parquet(storage.join(str(data_dir), "sft_train.parquet")).to_pylist()]

    assert summary["rows_per_worker"] == [8, 8]
    assert not set(ids[0]) & set(ids[1]), "the two workers saw overlapping rows"
    assert sorted(ids[0] + ids[1]) == sorted(expected), "every row is used exactly once"
    assert ids[0] + ids[1] != expected, "training examples are shuffled, not read in file order"
    assert all(side == "chosen" for rank in seen for _, side in rank)
    assert summary["steps"] == summary["planned_steps"] == 2  # 8 rows per worker / batch 4, one epoch
    assert summary["final_loss"] is not None and "eval_loss" in summary["eval"]
    assert storage.exists(storage.join(summary["checkpoint"], "checkpoint", "adapter_model.safetensors"))
    metrics = [json.loads(line) for line in storage.read_bytes(summary["metrics"]).decode().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
    assert all("grad_norm" in m for m in metrics if "loss" in m)
    assert storage.exists(summary["metrics_csv"])


def test_sft_logs_to_tensorboard_from_rank_zero_only(sft_run):
    from pathlib import Path

    from tests.helpers import tensorboard_scalars

    cfg, summary = sft_run
    run = Path(cfg.tracking.uri) / "persona-ray" / "sft"  # <uri>/<experiment>/<run name>
    scalars = tensorboard_scalars(run)
    assert [step for step, _ in scalars["train/loss"]] == [1, 2]  # one writer: two ranks would log each step twice
    assert [step for step, _ in scalars["train/learning_rate"]] == [1, 2]
    assert scalars["train/loss"][-1][1] == pytest.approx(summary["final_loss"], rel=1e-4)


def test_sft_logs_to_wandb_offline_with_the_evaluation_in_the_same_run(ray_local, tiny_model, data_dir, tmp_path,
                                                                        monkeypatch):
    from persona_ray.tailoring import SFTJobConfig, train_sft
    from tests.helpers import finished_wandb_runs

    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = SFTJobConfig(data=str(data_dir), output=str(tmp_path / "runs"), name="sft-wandb", training_type="chosen",
                       model=tiny_model, max_length=256, per_device_batch_size=8, save_steps=2,
                       tracking={"backend": "wandb", "uri": str(tmp_path / "wandb"), "group": "g"})
    summary = train_sft(cfg)
    (run,) = finished_wandb_runs(tmp_path / "wandb")
    assert run["name"] == "sft-wandb" and run["group"] == "g" and run["exit_code"] == 0 and "stage:sft" in run["tags"]
    assert run["config"]["job.training_type"] == "chosen" and run["config"]["job.lora.r"] == "16"
    losses = [row for row in run["history"] if "train/loss" in row]
    assert [row["train/global_step"] for row in losses] == [1, 2]
    evals = [row for row in run["history"] if "eval/loss" in row]
    assert len(evals) == 1 and evals[0]["eval/loss"] == pytest.approx(summary["eval"]["eval_loss"], rel=1e-4)


def _sequence_logps(model_dir: str, examples: list[dict], max_length: int) -> list[tuple[float, float]]:
    """(log p(chosen | prompt), log p(rejected | prompt)) summed over response tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persona_ray.tailoring.templates import tokenize_dpo

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for example in examples:
        tokens = tokenize_dpo(example, tokenizer, max_length)
        pair = []
        for side in ("chosen_input_ids", "rejected_input_ids"):
            ids = tokens["prompt_input_ids"] + tokens[side]
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, :-1]
            logps = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
            pair.append(float(logps[len(tokens["prompt_input_ids"]) - 1:].sum()))
        out.append(tuple(pair))
    return out


def test_dpo_from_merged_sft_raises_reward_accuracy_with_s3_checkpoints(sft_run, data_dir, s3_bucket, tmp_path):
    import boto3

    from persona_ray.tailoring.templates import dpo_examples
    from persona_ray.tailoring import DPOJobConfig, merge_adapter, train_dpo

    sft_cfg, sft = sft_run
    merged = merge_adapter(sft["checkpoint"], sft_cfg.model, str(tmp_path / "sft-merged"))
    cfg = DPOJobConfig(data=str(data_dir), output=f"s3://{s3_bucket}/runs", name="dpo", training_type="chosen",
                       sft_model=merged, num_workers=1, max_length=256, per_device_batch_size=4, epochs=6,
                       learning_rate=5e-3, lr_scheduler="constant", save_steps=4, num_to_keep=2,
                       tracking={"backend": "mlflow", "uri": f"file:{tmp_path / 'mlruns'}", "tags": {"test": "dpo"}})
    summary = train_dpo(cfg)

    # Checkpoints and metrics are in the bucket on the S3 server.
    keys = [o["Key"] for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
            for o in page.get("Contents", [])]
    checkpoints = {k.split("/")[2] for k in keys if k.startswith("runs/dpo/checkpoint_") and "/checkpoint/" in k}
    assert summary["checkpoint"].startswith(f"s3://{s3_bucket}/runs/dpo/checkpoint_")
    assert len(checkpoints) == 2  # num_to_keep of the 3 saved (steps 4, 8, 12)
    assert any(k.endswith("checkpoint/adapter_model.safetensors") for k in keys)
    assert "runs/dpo/metrics.jsonl" in keys and "runs/dpo/workers/rank-0.json" in keys
    assert summary["steps"] == 12  # 8 pairs / batch 4 = 2 steps an epoch, 6 epochs

    # The logged DPO reward accuracy rises from its start (0: policy == reference at step 1).
    metrics = [json.loads(line) for line in storage.read_bytes(summary["metrics"]).decode().splitlines()]
    accuracies = [m["rewards/accuracies"] for m in metrics if "rewards/accuracies" in m and "loss" in m]
    assert len(accuracies) == 12 and accuracies[0] == 0.0
    assert sum(accuracies[-4:]) / 4 > max(0.5, accuracies[0])
    assert metrics[-1]["step"] == 12 and any("rewards/margins" in m for m in metrics)

    # The same numbers in MLflow (TRL's integration, rank 0), with the job config as parameters.
    from mlflow.tracking import MlflowClient

    from tests.helpers import mlflow_runs

    (run,) = mlflow_runs(cfg.tracking.uri)
    assert run.info.run_name == "dpo" and run.data.tags["stage"] == "dpo" and run.data.tags["test"] == "dpo"
    assert run.data.params["job.beta"] == "0.1" and run.data.params["job.training_type"] == "chosen"
    assert run.data.params["job.lora.r"] == "16"
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    history = client.get_metric_history(run.info.run_id, "rewards/accuracies")
    assert [round(m.value, 6) for m in sorted(history, key=lambda m: m.step)] == [round(a, 6) for a in accuracies]
    losses = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in losses] == list(range(1, 13))
    assert [round(m.value, 6) for m in losses] == [round(m["loss"], 6) for m in metrics if "loss" in m]

    # Evaluated after training, on the same pairs: the merged DPO model's implicit reward
    # (log-ratio to the SFT reference) prefers the chosen answer; before training it is 0 for both.
    dpo_merged = merge_adapter(summary["checkpoint"], merged, str(tmp_path / "dpo-merged"))
    rows = storage.read_parquet(storage.join(str(data_dir), "dpo_train.parquet")).to_pylist()
    examples = [e for row in rows for e in dpo_examples(row, "chosen")]
    before = _sequence_logps(merged, examples, 256)
    after = _sequence_logps(dpo_merged, examples, 256)
    accuracy = sum((a[0] - b[0]) > (a[1] - b[1]) for a, b in zip(after, before)) / len(examples)
    print(f"DPO logged rewards/accuracies {accuracies}; after-training reward accuracy {accuracy}")
    assert accuracy >= 0.75, accuracy
    # That a merged model loads and generates through vLLM is the pipeline's generate stage, on
    # its merged PT-DPO and DPO models (test_job_submit.py): not a third engine start here.


def test_a_worker_killed_mid_run_resumes_from_the_last_checkpoint_and_keep_best_ranks_across_the_restart(
        ray_local, tiny_model, data_dir, tmp_path, monkeypatch):
    """Two workers, two epochs (two batches per worker each), an evaluation and a checkpoint every
    step; rank 0 dies at step 3 (the fault hook) and the run resumes from the step-2 checkpoint, in
    the second epoch: every step is trained once. Ray keeps the two checkpoints with the lowest
    eval_loss of all four (ranked across the restart) and the one returned is the lowest."""
    from persona_ray.tailoring import FAIL_AT_STEP_ENV, SFTJobConfig, train_sft

    monkeypatch.setenv(FAIL_AT_STEP_ENV, "3")
    cfg = SFTJobConfig(data=str(data_dir), output=str(tmp_path / "runs"), name="best", training_type="chosen",
                       model=tiny_model, num_workers=2, max_length=256, per_device_batch_size=4, epochs=2,
                       learning_rate=5.0, warmup_steps=2, eval_steps=1, keep_best=True, num_to_keep=2,
                       max_failures=1)
    summary = train_sft(cfg)

    assert summary["fault_injected"], "rank 0 never reached the fault step"
    assert summary["resumed_from_step"] == 2, "the restarted run did not resume from the step-2 checkpoint"
    assert summary["steps"] == summary["planned_steps"] == 4  # 2 batches per worker per epoch, 2 epochs
    metrics = [json.loads(line) for line in storage.read_bytes(summary["metrics"]).decode().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4]
    evaluations = {m["step"]: m["eval_loss"] for m in metrics if "eval_loss" in m}
    print("eval_loss by step:", evaluations, "best:", summary["best"])
    assert sorted(evaluations) == [1, 2, 3, 4]
    best_step = min(evaluations, key=evaluations.get)
    assert summary["best"]["step"] == best_step and summary["best"]["eval_loss"] == pytest.approx(evaluations[best_step])
    # Ray kept the num_to_keep best by eval_loss; the one returned is on disk and is the best.
    kept = {k["step"]: k for k in summary["best"]["kept"]}
    assert set(kept) == set(sorted(evaluations, key=evaluations.get)[:2]), (kept, evaluations)
    assert summary["checkpoint"] == kept[best_step]["checkpoint"]
    assert storage.exists(storage.join(summary["checkpoint"], "checkpoint", "adapter_model.safetensors"))


def test_plan_steps_evaluate_and_save_together_when_keeping_the_best():
    from persona_ray.tailoring import SFTJobConfig
    from persona_ray.tailoring.ray_loop import best_by_eval_loss, plan_steps

    every_epoch = SFTJobConfig(data="d", output="o", epochs=3, per_device_batch_size=4, eval_steps="epoch",
                               keep_best=True, save_steps=50)
    assert plan_steps(every_epoch, 40) == {"rows_per_worker": 40, "batches_per_worker": 10, "max_steps": 30,
                                           "eval_steps": 10, "save_steps": 10}
    plain = SFTJobConfig(data="d", output="o", epochs=1, save_steps=7)
    assert plan_steps(plain, 40)["eval_steps"] is None and plan_steps(plain, 40)["save_steps"] == 7
    with pytest.raises(ValueError, match="keep_best"):
        SFTJobConfig(data="d", output="o", keep_best=True)  # no evaluations during training to choose by
    ranked = [("c1", {"step": 1, "eval_loss": 2.0}), ("c2", {"step": 2, "eval_loss": 1.5}),
              ("c3", {"step": 3, "eval_loss": 1.5}), ("c4", {"step": 4})]
    assert best_by_eval_loss(ranked) == ("c3", {"step": 3, "eval_loss": 1.5})  # a tie goes to the later one
    with pytest.raises(RuntimeError, match="eval_loss"):
        best_by_eval_loss([("c4", {"step": 4})])


# ---------------------------------------------------------------------------------------------
# Config validation: fast, before any Ray worker.

@pytest.mark.parametrize("case", ["missing_split", "empty_split", "missing_persona", "bad_model", "dpo_no_sft_model"])
def test_config_errors_name_the_field(case, tmp_path, tiny_model):
    from persona_ray.tailoring import DPOJobConfig, SFTJobConfig, TrainConfigError, check_dpo_job, check_sft_job

    write_split(tmp_path, "sft_train", 4)
    write_split(tmp_path, "sft_val", 2)
    base = dict(data=str(tmp_path), output=str(tmp_path / "runs"), model=tiny_model, training_type="chosen")
    if case == "missing_split":
        cfg, field, text = SFTJobConfig(**{**base, "train_split": "nope"}), "train_split", "does not exist"
    elif case == "empty_split":
        write_split(tmp_path, "empty", 0)
        cfg, field, text = SFTJobConfig(**{**base, "train_split": "empty"}), "train_split", "has no rows"
    elif case == "missing_persona":
        write_split(tmp_path, "sft_train", 4, chosen_persona="")
        cfg, field, text = SFTJobConfig(**base), "training_type", "chosen_persona"
    elif case == "bad_model":
        cfg, field, text = SFTJobConfig(**{**base, "model": str(tmp_path / "no-model")}), "model", "does not exist"
    else:
        cfg = DPOJobConfig(data=str(tmp_path), output=str(tmp_path / "runs"), train_split="sft_train",
                           val_split=None)
        field, text = "sft_model", "merge_adapter"
    check = check_dpo_job if isinstance(cfg, DPOJobConfig) else check_sft_job
    with pytest.raises(TrainConfigError) as err:
        check(cfg)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ") and text in str(err.value) and "Fix:" in str(err.value)


def test_bf16_on_cpu_means_autocast_and_a_model_folder_that_does_not_load_is_rejected(tmp_path, tiny_model):
    from persona_ray.tailoring import SFTJobConfig, TrainConfigError, check_sft_job
    from persona_ray.tailoring.base import trl_arguments

    # bf16 on CPU is allowed (faster where the CPU has bf16 instructions: jobs/benchmarks/dtype.py)
    from types import SimpleNamespace

    plan = SimpleNamespace(max_steps=4, save_steps=2, eval_steps=None)
    arguments = trl_arguments(SFTJobConfig(data="d", output="o", bf16=True), plan, str(tmp_path))
    assert arguments["bf16"] is True and arguments["use_cpu"] is True
    assert "eval_strategy" not in arguments and arguments["save_steps"] == 2
    periodic = trl_arguments(SFTJobConfig(data="d", output="o"), SimpleNamespace(max_steps=4, save_steps=2, eval_steps=2),
                             str(tmp_path))
    assert periodic["eval_strategy"] == "steps" and periodic["eval_steps"] == 2
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    write_split(tmp_path, "sft_train", 2)
    with pytest.raises(TrainConfigError, match="cannot load model") as err:
        check_sft_job(SFTJobConfig(data=str(tmp_path), output="o", model=str(broken), val_split=None))
    assert err.value.field == "model"
