"""DPO training throughput: Ray Train (1 worker) vs plain TRL, measured side by side in one run.

    python jobs/benchmarks/train_throughput.py [--pairs 60] [--steps 80] [--warmup 10] [--threads 1]

Both sides train the same model (the tiny one unless --model) with the same DPOJobConfig (batch
size, max_length, LoRA, learning rate, max_steps) on the same token ids: the split is tokenised
once in Ray Data (persona_ray.tailoring.ray_loop.tokenized_split); Ray Train reads it as its dataset
shard, plain TRL gets the same rows, in the same order (sequential sampler), as a Hugging Face
Dataset, so both see identical batches. Both use TRL's DPOTrainer built by
persona_ray.tailoring.DPO().build_trainer and the same number of torch threads.

Steady-state steps/s: the time between the end of step `warmup` and the end of the last step,
taken from TrainerCallback timestamps, so Ray start-up, model loading and the first steps are
excluded on both sides. The Ray side includes what Ray adds per step: the Ray Data iterator, the
collate function, re-opening the shard each epoch and ray.train.report every `ray_report_steps`
(10) steps. Plain TRL runs before and after the Ray run; its rate is the mean of the two.
Target: ratio (Ray / plain) >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "persona_ray" / "data" / "sample_pairs.jsonl"


def write_split(folder: str, split: str, pairs: int) -> None:
    from persona_ray.core import storage
    from persona_ray.dataset.augment import ROW_FIELDS

    sample = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    rows = []
    for i in range(pairs):
        pair = sample[i % len(sample)]
        rows.append({"pair_id": f"bench-{i:05d}", "prompt": f"{pair['prompt']} (case {i})", "chosen": pair["chosen"],
                     "rejected": pair["rejected"], "domain": pair["domain"], "source": pair["source"],
                     "chosen_persona": "The user wants careful, detailed answers.",
                     "rejected_persona": "The user wants very short answers."})
    table = pa.Table.from_pylist(rows, schema=pa.schema([(f, pa.string()) for f in ROW_FIELDS]))
    storage.write_parquet(table, storage.join(folder, f"{split}.parquet"))


def steady_rate(step_end_times: list[float], warmup: int) -> float:
    """Steps per second after the warm-up steps (times are step-end timestamps)."""
    times = step_end_times[warmup - 1:]
    return (len(times) - 1) / (times[-1] - times[0])


def median_step_s(step_end_times: list[float], warmup: int) -> float:
    times = step_end_times[warmup - 1:]
    return statistics.median(b - a for a, b in zip(times, times[1:]))


def _ids(value) -> list[int]:
    return value.tolist() if hasattr(value, "tolist") else list(value)


def plain_trl(cfg, model_path: str, rows: list[dict]) -> list[float]:
    """TRL's DPOTrainer in this process on the same token ids, with its own DataLoader."""
    import datasets
    import torch
    from transformers import TrainerCallback

    from persona_ray.tailoring import DPO
    from persona_ray.tailoring.ray_loop import WorkerPlan

    class Times(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    torch.set_num_threads(cfg.cpus_per_worker)
    with tempfile.TemporaryDirectory(prefix="bench-plain-") as workdir:
        plan = WorkerPlan(cfg=cfg, method=DPO(), model_path=model_path, files=None, max_steps=cfg.max_steps,
                          evaluate=False, fail_at_step=None)
        trainer = DPO().build_trainer(plan, workdir)
        # The Ray shard is read in order; shuffling here would pad batches differently.
        trainer.args.train_sampling_strategy = "sequential"
        trainer.train_dataset = datasets.Dataset.from_list(
            [{"prompt_ids": _ids(r["prompt_input_ids"]), "chosen_ids": _ids(r["chosen_input_ids"]),
              "rejected_ids": _ids(r["rejected_input_ids"])} for r in rows])
        times = Times()
        trainer.add_callback(times)
        trainer.train()
    assert len(times.ends) == cfg.max_steps
    return times.ends


def ray_train(cfg) -> tuple[list[float], dict]:
    from persona_ray.core import storage
    from persona_ray.tailoring import train_dpo

    summary = train_dpo(cfg)
    worker = json.loads(storage.read_bytes(storage.join(summary["run"], "workers", "rank-0.json")))
    assert len(worker["step_end_times"]) == cfg.max_steps
    return worker["step_end_times"], summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--training-type", default="all")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides (= cpus_per_worker)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

    from persona_ray.core.ray_runtime import ensure_ray
    from persona_ray.core.models import resolve_model
    from persona_ray.dataset.splits import split_uri
    from persona_ray.tailoring import DPO, DPOJobConfig
    from persona_ray.tailoring.ray_loop import tokenized_split

    with tempfile.TemporaryDirectory(prefix="bench-train-") as root:
        data = os.path.join(root, "data")
        write_split(data, "dpo_train", args.pairs)
        model = resolve_model(args.model)
        cfg = DPOJobConfig(data=data, output=os.path.join(root, "runs"), name="bench", sft_model=model,
                           training_type=args.training_type, num_workers=1, cpus_per_worker=args.threads,
                           max_steps=args.steps, per_device_batch_size=args.batch_size, max_length=args.max_length,
                           learning_rate=1e-4, save_steps=args.steps, evaluate=False, val_split=None)
        model_path, _ = DPO().check(cfg)
        ensure_ray()  # Ray runs during both measurements, as it would on a node
        rows = tokenized_split(split_uri(data, cfg.train_split), DPO(), cfg.training_type, model_path,
                               cfg.max_length).take_all()

        # plain, Ray, plain: the plain rate is the mean of the runs before and after, so a slow
        # drift in machine load (shared CPUs) does not favour either side.
        plain_times = [plain_trl(cfg, model_path, rows)]
        ray_times, summary = ray_train(cfg)
        plain_times.append(plain_trl(cfg, model_path, rows))

    plain_rates = [steady_rate(t, args.warmup) for t in plain_times]
    plain = statistics.mean(plain_rates)
    ray_rate = steady_rate(ray_times, args.warmup)
    result = {"examples": len(rows), "steps": args.steps, "warmup_steps": args.warmup,
              "batch_size": args.batch_size, "max_length": args.max_length, "threads": args.threads,
              "lora_r": cfg.lora.r, "ray_report_steps": cfg.ray_report_steps,
              "plain_trl_steps_per_s": round(plain, 3), "plain_trl_runs": [round(r, 3) for r in plain_rates],
              "ray_train_steps_per_s": round(ray_rate, 3),
              "median_step_s": {"plain": round(median_step_s(plain_times[0], args.warmup), 4),
                                "ray": round(median_step_s(ray_times, args.warmup), 4)},
              "ratio_ray_over_plain": round(ray_rate / plain, 3), "target": 0.8,
              "ray_final_loss": summary["final_loss"]}
    print(f"plain TRL DPOTrainer : {plain:.2f} steps/s (runs before/after: {plain_rates[0]:.2f}, {plain_rates[1]:.2f})")
    print(f"Ray Train, 1 worker  : {ray_rate:.2f} steps/s")
    print(f"ratio Ray / plain    : {ray_rate / plain:.2f} (target >= 0.8)")
    print("BENCH_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
