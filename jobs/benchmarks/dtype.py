"""fp32 or bf16 on this CPU? vLLM generation and LoRA training, each dtype side by side in one run.

    python jobs/benchmarks/dtype.py [--model smollm2] [--prompts 32] [--max-tokens 64] [--steps 6]

vLLM: a bare `vllm.LLM` per dtype, each in its own subprocess (one engine per process), the same
chat prompts, greedy, fixed max_tokens with no stop string, so both produce the same number of
tokens; the rate is generated tokens per second of `generate()` (model loading excluded).
Training: the model loaded in that dtype, a LoRA adapter (the project's LoraSettings), AdamW,
forward + backward + step on a batch of 4 examples of `--tokens` tokens; the rate is the median
step time after one warm-up step. Three training variants: fp32 weights, bf16 frozen weights with
the fp32 LoRA adapter PEFT keeps, and fp32 weights under bf16 autocast (TRL's bf16=True on CPU).
The ratios printed are rate(variant) / rate(fp32): above 1, the variant is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

QUESTIONS = [
    "How do I keep basil alive indoors?", "What is a good way to start running?",
    "How should I store fresh bread?", "Why does my bike chain keep slipping?",
    "How can I learn to cook rice well?", "What should I pack for a day hike?",
    "How do I write a polite complaint email?", "How do I clean a cast-iron pan?",
]


def vllm_rate(model_path: str, dtype: str, prompts: int, max_tokens: int) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_path, dtype=dtype, max_model_len=1024, enforce_eager=True, seed=0)
    messages = [[{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})"}] for i in range(prompts)]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    llm.chat(messages[:2], params)  # warm-up
    start = time.perf_counter()
    outputs = llm.chat(messages, params)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"dtype": dtype, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


TRAINING_VARIANTS = {
    "float32": "fp32 weights",
    "bfloat16": "bf16 frozen weights, fp32 LoRA adapter (PEFT upcasts it)",
    "autocast": "fp32 weights under torch.autocast(bf16): what TrainingArguments(bf16=True) does on CPU",
}


def training_step_s(model_path: str, variant: str, steps: int, tokens: int) -> dict:
    import contextlib

    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from persona_ray.tailoring.base import LoraSettings

    torch.manual_seed(0)
    dtype = torch.bfloat16 if variant == "bfloat16" else torch.float32
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype),
                           LoraSettings().peft_config())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = torch.randint(100, 20000, (4, tokens))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if variant == "autocast"
                    else contextlib.nullcontext())
        with autocast:
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return {"variant": variant, "median_step_s": statistics.median(times[1:]), "loss": loss.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=200, help="tokens per training example")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # "vllm:<dtype>": run one engine and print JSON
    args = parser.parse_args()

    from persona_ray.core.models import resolve_model

    model_path = resolve_model(args.model)
    if args.child:
        _, dtype = args.child.split(":")
        print("RESULT " + json.dumps(vllm_rate(model_path, dtype, args.prompts, args.max_tokens)), flush=True)
        return

    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    generation = {}
    for dtype in ("float32", "bfloat16"):
        run = subprocess.run([sys.executable, __file__, "--model", args.model, "--prompts", str(args.prompts),
                              "--max-tokens", str(args.max_tokens), "--child", f"vllm:{dtype}"],
                             env=env, capture_output=True, text=True)
        lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        if run.returncode != 0 or not lines:
            print(f"vLLM {dtype} failed (exit {run.returncode}):\n{run.stderr[-2000:]}")
            generation[dtype] = None
            continue
        generation[dtype] = json.loads(lines[-1][len("RESULT "):])
        print(f"vLLM {dtype:8s}: {generation[dtype]['tokens']} tokens in {generation[dtype]['seconds']:.1f} s "
              f"= {generation[dtype]['tokens_per_s']:.1f} tokens/s", flush=True)

    training = {}
    for variant, what in TRAINING_VARIANTS.items():
        training[variant] = training_step_s(model_path, variant, args.steps, args.tokens)
        print(f"train {variant:8s}: median step {training[variant]['median_step_s']:.2f} s "
              f"(batch 4 x {args.tokens} tokens; {what})", flush=True)

    if generation["float32"] and generation["bfloat16"]:
        print(f"vLLM tokens/s ratio bf16/fp32: "
              f"{generation['bfloat16']['tokens_per_s'] / generation['float32']['tokens_per_s']:.2f}")
    for variant in ("bfloat16", "autocast"):
        print(f"training steps/s ratio {variant}/fp32: "
              f"{training['float32']['median_step_s'] / training[variant]['median_step_s']:.2f}")


if __name__ == "__main__":
    main()
