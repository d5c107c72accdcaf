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
from tests.conftest import SAMPLE_PAIRS, read_jsonl

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
                       per_device_batch_size=4, learning_rate=1e-3, save_steps=1)
    return cfg, train_sft(cfg)


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
                       learning_rate=5e-3, lr_scheduler="constant", save_steps=4, num_to_keep=2)
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

    # The merged model loads and generates through vLLM (Ray Data LLM engine actors).
    import ray.data

    from persona_ray.engines.settings import EngineSettings
    from persona_ray.tailoring.templates import format_input

    queries = [{"i": i, "prompt": format_input(r["prompt"], r["chosen_persona"])} for i, r in enumerate(rows[:4])]
    engine = EngineSettings(model=dpo_merged, sampling={"max_tokens": 16, "stop": []})
    out = engine.generate(ray.data.from_items(queries)).take_all()
    assert sorted(o["i"] for o in out) == [0, 1, 2, 3]
    assert all(o["num_output_tokens"] > 0 and not o["error"] for o in out)


def test_fault_hook_restarts_from_last_checkpoint(ray_local, tiny_model, data_dir, tmp_path, monkeypatch):
    from persona_ray.tailoring import FAIL_AT_STEP_ENV, SFTJobConfig, train_sft

    monkeypatch.setenv(FAIL_AT_STEP_ENV, "3")
    cfg = SFTJobConfig(data=str(data_dir), output=str(tmp_path / "runs"), name="faulty", training_type="chosen",
                       model=tiny_model, num_workers=2, max_length=256, per_device_batch_size=4, epochs=3,
                       save_steps=2, max_failures=1, evaluate=False)
    summary = train_sft(cfg)

    assert summary["fault_injected"], "rank 0 never reached the fault step"
    assert summary["resumed_from_step"] == 2, "the restarted run did not resume from the step-2 checkpoint"
    assert summary["steps"] == summary["planned_steps"] == 6  # 2 batches per worker per epoch, 3 epochs
    metrics = [json.loads(line) for line in storage.read_bytes(summary["metrics"]).decode().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4, 5, 6]


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
    arguments = trl_arguments(SFTJobConfig(data="d", output="o", bf16=True), 4, str(tmp_path))
    assert arguments["bf16"] is True and arguments["use_cpu"] is True
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    write_split(tmp_path, "sft_train", 2)
    with pytest.raises(TrainConfigError, match="cannot load model") as err:
        check_sft_job(SFTJobConfig(data=str(tmp_path), output="o", model=str(broken), val_split=None))
    assert err.value.field == "model"
