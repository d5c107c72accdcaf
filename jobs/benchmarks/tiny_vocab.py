"""DPO step time of the tiny model by vocabulary size, measured side by side in one run.

    python jobs/benchmarks/tiny_vocab.py [--vocab 4096 1024] [--steps 12] [--warmup 2]

Why it matters: on a CPU, TRL 1.16 scores every position of a batch (prompt and padding included)
against the whole vocabulary, in torch ops over [tokens, vocabulary] tiles; for a model as small as
the tests' tiny one that is most of a DPO step, so the vocabulary sets the cost of every training
test. Each size gets its own tiny model (persona_ray.testing.tiny_model, same seed and training
text) and trains on the same persona-world rows (training type `all`, the world test's batch of 8,
max_length 256, LoRA on every linear layer) with plain TRL (no Ray), one torch thread, in turn.
Prints the median step time per size (after `warmup` steps), the tokens per example (a smaller
vocabulary splits text into more tokens) and the ratio of each size's step time to the first's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def world_token_rows(tokenizer, max_length: int) -> list[dict]:
    from persona_ray.tailoring.dpo import DPO
    from persona_ray.tailoring.templates import dpo_examples, tokenize_dpo
    from persona_ray.world.build import build_world, confirmed_responses, world_prompts
    from persona_ray.world.spec import DEFAULT_TYPES
    from persona_ray.world.synthetic import synthetic_response

    responses = confirmed_responses(world_prompts(), DEFAULT_TYPES, synthetic_response)
    splits, _ = build_world(responses, DEFAULT_TYPES, 4, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=0)
    examples = [e for row in splits["train"] for e in dpo_examples(row, "all")]
    tokens = [tokenize_dpo(e, tokenizer, max_length) for e in examples]
    return [{key: t[column] for column, key in DPO.token_columns.items()} for t in tokens]


def step_times(vocab_size: int, steps: int, workdir: str) -> tuple[list[float], float]:
    """(seconds of each DPO step, mean tokens per example) for a tiny model of this vocabulary."""
    import datasets
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from persona_ray.tailoring.base import LoraSettings
    from persona_ray.testing.tiny_model import LINEAR_LAYERS, TinyModelSpec, build_tiny_model

    model = str(build_tiny_model(f"{workdir}/models", TinyModelSpec(vocab_size=vocab_size)))
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = world_token_rows(tokenizer, 256)
    per_example = statistics.mean(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"]))
                                  for r in rows)
    args = DPOConfig(output_dir=f"{workdir}/run-{vocab_size}", per_device_train_batch_size=8, learning_rate=5e-3,
                     max_steps=steps, max_length=256, bf16=False, use_cpu=True, gradient_checkpointing=False,
                     save_strategy="no", report_to=[], disable_tqdm=True, logging_steps=10_000,
                     dataloader_num_workers=0, remove_unused_columns=False)
    lora = LoraSettings(r=16, alpha=32, target_modules=list(LINEAR_LAYERS))
    # TRL tokenises a text dataset itself; the token rows replace it, as Ray Train's shard does.
    placeholder = datasets.Dataset.from_list([{"prompt": "Prompt: -\nResponse:", "chosen": " a", "rejected": " b"}])
    trainer = DPOTrainer(model=model, args=args, train_dataset=placeholder, processing_class=tokenizer,
                         peft_config=lora.peft_config())
    trainer.train_dataset = datasets.Dataset.from_list(rows)
    ends: list[float] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())

    trainer.add_callback(StepEnds())
    start = time.perf_counter()
    trainer.train()
    return [b - a for a, b in zip([start, *ends], ends)], per_example


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[4096, 1024])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory(prefix="tiny-vocab-") as workdir:
        for vocab_size in args.vocab:
            times, per_example = step_times(vocab_size, args.steps, workdir)
            results[vocab_size] = (statistics.median(times[args.warmup:]), per_example)
    first = results[args.vocab[0]][0]
    print(f"{'vocabulary':>10}  {'tokens/example':>14}  {'s/step':>7}  {'vs ' + str(args.vocab[0]):>8}")
    for vocab_size, (step_s, per_example) in results.items():
        print(f"{vocab_size:>10}  {per_example:>14.1f}  {step_s:>7.3f}  {first / step_s:>7.2f}x")


if __name__ == "__main__":
    main()
