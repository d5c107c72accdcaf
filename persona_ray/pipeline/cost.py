"""What persona inference costs at scale: tokens per pair measured from the real PI prompts, and
GPU-hours and money for 8B / 70B / 405B models from published vLLM throughput.

    pi_tokens(rows, k, tokenizer)        {"input", "output", "how"}: mean tokens of one pair's two PI
                                         requests (the k-shot prompt this project sends, both sides)
    pi_cost(pairs, tokens, price, ...)   one row per published model size: GPUs, GPU-hours, cost
    student_route(pairs, fraction, ...)  the PI student route beside it: each teacher size on a
                                         fraction of the pairs, a student trained on its personas,
                                         the student on the rest (CPU machines, measured rates)

The formula, per engine (one PI request per side of a pair; the k-shot prefix is counted in full,
though vLLM's prefix cache computes it once per engine, so the estimate errs long):

    seconds   = input tokens / prefill rate + output tokens / decode rate
    GPU-hours = seconds x GPUs per engine / 3600          cost = GPU-hours x price per GPU-hour
    decode rate  = the output tokens/s vLLM reached in a published benchmark (PUBLISHED; that
                   benchmark also spent time on its own prompts, so this rate is low, never high)
    prefill rate = GPUs x gpu_flops x mfu / (2 x parameters)   (compute-bound; mfu is an assumption)
"""

from __future__ import annotations

from typing import Any, Callable

# Lambda Labs, "LLMs inference benchmarks, using vLLM, on Lambda Cloud" (2024,
# github.com/LambdaLabsML/vllm-benchmark, benchmark_v0.md, "vLLM v0.5.4 v.s. v0.6.0"): vLLM v0.6.0 with
# 10 scheduler steps on H100-80GB-SXM, ShareGPT prompts, max-num-seqs 256, max-seq-len 2048, output
# token throughput of one engine.
PUBLISHED_SOURCE = ("Lambda Labs vLLM benchmark (github.com/LambdaLabsML/vllm-benchmark, benchmark_v0.md): vLLM "
                    "v0.6.0, 10 scheduler steps, H100-80GB-SXM, ShareGPT prompts, 256 sequences")
PUBLISHED = [
    {"model": "Llama-3.1-8B", "parameters_b": 8, "gpus": 1, "output_tokens_per_s": 8088.35},
    {"model": "Llama-3.1-70B", "parameters_b": 70, "gpus": 4, "output_tokens_per_s": 3542.88},
    {"model": "Llama-3.1-405B-FP8", "parameters_b": 405, "gpus": 8, "output_tokens_per_s": 1714.07},
]
PERSONA_OVERHEAD_TOKENS = 4  # the end of the sentence and the stop


def pi_tokens(rows: list[dict], k: int, count: Callable[[str], int] | None, domain: str | None = None) -> dict:
    """Mean tokens of the two PI requests of a pair (chosen side and rejected side), from the
    prompts this project builds for `rows` ({"prompt", "chosen", "rejected", "domain"?});
    output = the exemplar personas' mean length (what a PI model writes). `count`: a tokenizer's
    counter; None: characters / 4."""
    from persona_ray.inference.prompt import DEFAULT_DOMAIN, build_pi_prompt, exemplar_personas

    if not rows:
        raise ValueError("pi_tokens: no pairs to measure")
    counter = count or (lambda text: max(1, round(len(text) / 4)))
    inputs = []
    for row in rows:
        where = domain or row.get("domain") or DEFAULT_DOMAIN
        for side in ("chosen", "rejected"):
            inputs.append(counter(build_pi_prompt(row["prompt"], row["chosen"], row["rejected"], side, where, k)))
    personas = exemplar_personas()
    output = sum(counter(p) for p in personas) / len(personas) + PERSONA_OVERHEAD_TOKENS
    return {"input": 2 * sum(inputs) / len(inputs), "output": 2 * output, "pairs_measured": len(rows),
            "how": "tokenizer" if count else "characters / 4"}


def pi_cost(pairs: int, tokens: dict, price_per_gpu_hour: float, gpu_flops: float, mfu: float) -> list[dict[str, Any]]:
    """GPU-hours and cost of PI over `pairs` pairs for every published model size."""
    found = []
    for model in PUBLISHED:
        prefill_rate = model["gpus"] * gpu_flops * mfu / (2 * model["parameters_b"] * 1e9)
        seconds = pairs * (tokens["input"] / prefill_rate + tokens["output"] / model["output_tokens_per_s"])
        gpu_hours = seconds * model["gpus"] / 3600
        found.append({"model": model["model"], "gpus_per_engine": model["gpus"],
                      "decode_tokens_per_s": model["output_tokens_per_s"], "prefill_tokens_per_s": round(prefill_rate),
                      "gpu_hours": round(gpu_hours, 1), "cost": round(gpu_hours * price_per_gpu_hour, 0)})
    return found


def student_route(pairs: int, fraction: float, teacher_cost: Callable[[int], list[dict]], student: dict) -> list[dict]:
    """Per teacher size: the teacher on all `pairs` against the teacher on `fraction` of them + a
    student trained on those (both sides, one epoch, and one of DPO when `dpo_cost`) + the student
    inferring the rest. `teacher_cost(n)`: pi_cost's rows for n pairs. `student`: {"pairs_per_s",
    "train_examples_per_s", "machine_price_per_hour"} of one CPU machine, measured (PlanSettings), and
    "dpo_cost": what one DPO example costs in SFT examples (0: no DPO)."""
    taught = round(fraction * pairs)
    train_hours = 2 * taught * (1 + student.get("dpo_cost", 0.0)) / student["train_examples_per_s"] / 3600
    infer_hours = (pairs - taught) / student["pairs_per_s"] / 3600
    student_cost = (train_hours + infer_hours) * student["machine_price_per_hour"]
    rows = []
    for on_all, on_fraction in zip(teacher_cost(pairs), teacher_cost(taught)):
        rows.append({"teacher": on_all["model"], "pairs": pairs, "teacher_on_all": on_all["cost"],
                     "teacher_on_fraction": on_fraction["cost"], "student_train_machine_hours": round(train_hours, 1),
                     "student_infer_machine_hours": round(infer_hours, 1), "student_cost": round(student_cost, 0),
                     "route_total": round(on_fraction["cost"] + student_cost, 0)})
    return rows


def format_student_route(fraction: float, rows: list[dict], student: dict) -> str:
    dpo = f", then one of DPO at {student['dpo_cost']:g}x an SFT example" if student.get("dpo_cost") else ""
    lines = [f"PI student route: teacher on {fraction:.0%} of the pairs, a student trained on its personas (both "
             f"sides, one epoch{dpo}), the student on the rest, on CPU machines at ${student['machine_price_per_hour']:g} an "
             f"hour ({student['pairs_per_s']:g} pairs/s, {student['train_examples_per_s']:g} training examples/s a "
             f"machine: {student['measured']})",
             f"{'pairs':>12} {'teacher':<20} {'teacher on all':>15} {'teacher on f':>13} {'student m-h':>12} "
             f"{'student cost':>13} {'route total':>12}"]
    for r in rows:
        machine_hours = r["student_train_machine_hours"] + r["student_infer_machine_hours"]
        lines.append(f"{r['pairs']:>12,} {r['teacher']:<20} {r['teacher_on_all']:>15,.0f} {r['teacher_on_fraction']:>13,.0f} "
                     f"{machine_hours:>12,.1f} {r['student_cost']:>13,.0f} {r['route_total']:>12,.0f}")
    return "\n".join(lines)


def format_cost(pairs: int, tokens: dict, rows: list[dict], price: float, mfu: float) -> str:
    lines = [f"PI cost for {pairs:,} pairs: {tokens['input']:,.0f} input + {tokens['output']:,.0f} output tokens a "
             f"pair (both sides; measured on {tokens['pairs_measured']} pairs of {tokens.get('measured_on', 'the data')}, "
             f"{tokens['how']}); "
             f"at ${price:g} per GPU-hour (USD), prefill at {mfu:.0%} MFU",
             f"{'model':<20} {'GPUs':>4} {'decode tok/s':>12} {'prefill tok/s':>13} {'GPU-h':>10} {'cost':>12}"]
    for r in rows:
        lines.append(f"{r['model']:<20} {r['gpus_per_engine']:>4} {r['decode_tokens_per_s']:>12,.0f} "
                     f"{r['prefill_tokens_per_s']:>13,} {r['gpu_hours']:>10,.1f} {r['cost']:>12,.0f}")
    lines.append(f"decode rates: {PUBLISHED_SOURCE}")
    return "\n".join(lines)
