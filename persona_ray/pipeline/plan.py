"""`persona-ray pipeline --plan`: what a pipeline config will run, on what, and roughly how long,
before anything starts.

For each stage: the model, the accelerators it holds (engines: concurrency × tensor parallel;
training: workers), the requests and tokens it moves, and an estimate of accelerator-hours.
Token counts come from the pairs file when it can be read here (characters / 4 per token),
otherwise from the config's `plan` block (the dataset's size as published). Rates are rough
assumptions for one H100-class GPU, written out in PlanSettings so they can be changed:

    generation (vLLM, batched)  prefill / decode tokens per second of one engine, scaled from an
                                8B model by 8 / parameters (billions), times its GPUs
    training (LoRA)             6 · parameters · tokens FLOPs at `mfu` of `gpu_flops`

Models whose size is not in their name (tiny, smollm2) run on CPU and are not estimated.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import Field

from persona_ray.core import storage
from persona_ray.core.settings import Settings
from persona_ray.pipeline.cost import format_cost

if TYPE_CHECKING:
    from persona_ray.pipeline.run import PipelineConfig

CHARS_PER_TOKEN = 4
# Measured here: the persona world's SmolLM2-135M student (LoRA on every linear layer) on a 2-core
# AVX2 EPYC, fp32: 120 steps x 4 examples trained and merged in 37.2 min; 92 test pairs inferred in
# 193 s, engine start included (jobs/benchmarks/README.md, "PI student in the persona world", run 2).
STUDENT_MEASURED = ("a SmolLM2-135M student on a 2-core AVX2 EPYC, engine and Ray start included "
                    "(jobs/benchmarks/README.md)")
STUDENT_PAIRS_PER_S = round(92 / 193, 3)
STUDENT_TRAIN_EXAMPLES_PER_S = round(120 * 4 / (37.2 * 60), 3)
# One DPO example of the student (the route's `dpo`: two personas and the reference pass) costs this
# many SFT examples: 0.165 against 0.375 examples/s in one world run (the avx512_bf16 EPYC, 2026-12-08).
STUDENT_DPO_COST = round(0.375 / 0.165, 2)
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*[bB](?![a-z])")


class PlanSettings(Settings):
    """Sizes and rates `--plan` assumes (it never runs a model)."""

    pairs: int | None = Field(None, ge=1, description="preference pairs, when the pairs file cannot be read here")
    prompt_chars: float = Field(400, gt=0, description="mean characters of a prompt (when not measured)")
    response_chars: float = Field(1200, gt=0, description="mean characters of a response (when not measured)")
    prefill_tokens_per_s: float = Field(20000, gt=0, description="one 8B engine on one GPU, batched prefill")
    decode_tokens_per_s: float = Field(2500, gt=0, description="one 8B engine on one GPU, batched decode")
    gpu_flops: float = Field(989e12, gt=0, description="dense bf16 FLOP/s of one GPU (H100 SXM)")
    mfu: float = Field(0.3, gt=0, le=1, description="share of gpu_flops training (and PI prefill in the cost table) "
                       "reaches")
    price_per_gpu_hour: float = Field(2.5, gt=0, description="what one GPU-hour costs you (an assumption: set "
                                      "your own), for the PI cost table")
    tokenizer: str | None = Field("smollm2", description="whose tokenizer counts the PI prompts' tokens ('smollm2' "
                                  "is offline here; a model folder); none: characters / 4")
    sample_pairs: int = Field(200, ge=1, description="pairs whose PI prompts are built and counted")
    student_fraction: float | None = Field(None, gt=0, lt=1, description="also price the PI student route for the "
                                           "config's pairs, 1 M and 10 M: the teacher on this share of the pairs, a "
                                           "student trained on its personas, the student on the rest; default: "
                                           "pi_student.share when the pipeline runs that route")
    student_pairs_per_s: float = Field(STUDENT_PAIRS_PER_S, gt=0, description="one CPU machine's student PI "
                                       f"throughput, pairs a second (both sides); default: {STUDENT_MEASURED}")
    student_train_examples_per_s: float = Field(STUDENT_TRAIN_EXAMPLES_PER_S, gt=0, description="one CPU machine's "
                                                f"student training speed, examples a second; default: {STUDENT_MEASURED}")
    student_machine_price_per_hour: float = Field(0.1, gt=0, description="what one such CPU machine costs an hour "
                                                  "(an assumption: set your own)")


def parameters_b(model: str) -> float | None:
    """Billions of parameters named in a model id ("Llama-3.1-8B" -> 8, "prometheus-7b" -> 7)."""
    found = _SIZE.findall(model.rsplit("/", 1)[-1])
    return float(found[-1]) if found else None


def _read_pairs(path: str) -> list[dict] | None:
    """The rows of a local/S3 pairs file, or None where it cannot be read here."""
    from persona_ray.dataset.splits import read_table

    try:
        return (read_table(path) or None) if storage.exists(path) else None
    except (OSError, ValueError):
        return None


def _measure_pairs(rows: list[dict] | None) -> tuple[int, float, float] | None:
    """(pairs, mean prompt chars, mean response chars) of the pairs, or None."""
    if not rows:
        return None
    prompt = sum(len(str(r.get("prompt", ""))) for r in rows) / len(rows)
    response = sum(len(str(r.get("chosen", ""))) + len(str(r.get("rejected", ""))) for r in rows) / (2 * len(rows))
    return len(rows), prompt, response


def _pi_cost(cfg: PipelineConfig, rows: list[dict] | None, pairs: int) -> dict[str, Any]:
    """The PI cost table (cost.py) for `pairs` pairs, tokens counted on the config's own pairs where
    they can be read here, else on the bundled sample pairs."""
    import json
    from importlib import resources

    from persona_ray.pipeline.cost import pi_cost, pi_tokens

    rates = cfg.plan
    source = cfg.pairs.input
    if not rows:
        text = resources.files("persona_ray.data").joinpath("sample_pairs.jsonl").read_text(encoding="utf-8")
        rows, source = [json.loads(line) for line in text.splitlines() if line.strip()], "the bundled sample pairs"
    sample = [r for r in rows if all(isinstance(r.get(f), str) and r[f].strip() for f in ("prompt", "chosen", "rejected"))]
    count = None
    if rates.tokenizer:
        from transformers import AutoTokenizer

        from persona_ray.core.models import resolve_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(rates.tokenizer))
        count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    tokens = pi_tokens(sample[:rates.sample_pairs], int(cfg.infer.get("k_shot", 3)), count)
    tokens["how"] += f" ({rates.tokenizer})" if rates.tokenizer else ""
    route = cfg.pi_student
    # The student's own prompts (its k_shot, usually 0: no exemplars), for the pi-student stage.
    student_tokens = pi_tokens(sample[:rates.sample_pairs], int(route.train.get("k_shot", 0)), count) if route else None
    def cost_of(n: int) -> list[dict]:
        return pi_cost(n, tokens, rates.price_per_gpu_hour, rates.gpu_flops, rates.mfu)

    models = cost_of(pairs)
    found = {"pairs": pairs, "tokens": {**tokens, "measured_on": source}, "price_per_gpu_hour": rates.price_per_gpu_hour,
             "mfu": rates.mfu, "models": models, "student_tokens": student_tokens}
    fraction = rates.student_fraction or (route.share if route and not route.teacher else None)
    if fraction:
        from persona_ray.pipeline.cost import student_route

        student = {"pairs_per_s": rates.student_pairs_per_s, "train_examples_per_s": rates.student_train_examples_per_s,
                   "machine_price_per_hour": rates.student_machine_price_per_hour, "measured": STUDENT_MEASURED,
                   "dpo_cost": STUDENT_DPO_COST if route and route.dpo is not None else 0.0}
        found["student"] = {**student, "fraction": fraction, "rows": [
            row for size in dict.fromkeys((pairs, 1_000_000, 10_000_000))
            for row in student_route(size, fraction, cost_of, student)]}
    return found


def _gen_hours(model: str, gpus: int, tokens_in: float, tokens_out: float, rates: PlanSettings) -> float | None:
    size = parameters_b(model)
    if size is None:
        return None
    scale = 8 / size  # a bigger model moves fewer tokens a second per GPU-engine
    seconds = tokens_in / (rates.prefill_tokens_per_s * scale * gpus) + tokens_out / (rates.decode_tokens_per_s * scale * gpus)
    return seconds / 3600 * gpus


def _train_hours(model: str, tokens: float, rates: PlanSettings) -> float | None:
    size = parameters_b(model)
    return None if size is None else 6 * size * 1e9 * tokens / (rates.gpu_flops * rates.mfu) / 3600


def build_plan(cfg: PipelineConfig, pairs_override: int | None = None) -> dict[str, Any]:
    """Every stage with its model, accelerators, tokens and estimated accelerator-hours, and the
    PI cost table. `pairs_override`: plan for that many pairs (sizes per pair as measured)."""
    rates = cfg.plan
    rows = _read_pairs(cfg.pairs.input)
    measured = _measure_pairs(rows)
    if measured:
        pairs, prompt_chars, response_chars = measured
        sizes_from = f"measured from {cfg.pairs.input}"
    elif rates.pairs:
        pairs, prompt_chars, response_chars = rates.pairs, rates.prompt_chars, rates.response_chars
        sizes_from = "the config's plan block (the pairs file is not readable here)"
    else:
        raise ValueError(f"pairs.input: {cfg.pairs.input} cannot be read here; give plan.pairs (and the mean "
                         "prompt_chars / response_chars) to plan without it")
    if pairs_override:
        pairs, sizes_from = pairs_override, f"{pairs_override:,} pairs asked for; sizes per pair {sizes_from}"
    prompt_t, response_t = prompt_chars / CHARS_PER_TOKEN, response_chars / CHARS_PER_TOKEN
    engine, judge = cfg.engine, cfg.judge
    engine_gpus = _engine_gpus(engine)
    judge_gpus = _engine_gpus(judge)
    base = cfg.base_model or engine.model
    splits = cfg.splits  # shares count prompts; here one pair a prompt
    test = min(splits.test_size or round(splits.test * pairs), pairs)
    fewshot_rows = splits.fewshot_size or round(splits.fewshot * pairs)
    train = max(pairs - test - fewshot_rows, 0) * (1 - splits.val)
    pool = train if splits.share_train_pool else train / 2
    sides = 2 if cfg.training_type == "all" else 1
    persona_t = 30  # a one-sentence persona

    def examples(job: dict) -> float:
        """Training examples one run reads: max_steps worth of batches, or epochs over its pool."""
        if job.get("max_steps"):
            return (job["max_steps"] * job.get("per_device_batch_size", 4) * job.get("num_workers", 1)
                    * job.get("gradient_accumulation", 1))
        return pool * sides * job.get("epochs", 1)
    stages = []

    def add(stage: str, model: str, gpus: int, requests: int, tokens_in: float, tokens_out: float, hours):
        size = parameters_b(model)
        bytes_per_weight = 1 if "fp8" in model.lower() else 2  # FP8 or bf16 weights, per replica
        stages.append({"stage": stage, "model": model, "accelerators": gpus if hours is not None else "CPU",
                       "weights_gb": None if size is None else round(bytes_per_weight * size, 1),
                       "requests": requests, "input_tokens": int(tokens_in), "output_tokens": int(tokens_out),
                       "accelerator_hours": None if hours is None else round(hours, 2)})

    # PI: both sides of every pair, the k-shot prompts this project builds, counted (cost.py).
    pi = _pi_cost(cfg, rows, pairs)
    route = cfg.pi_student
    # With a PI student the PI model labels its share of the pairs (none when a teacher is given).
    labelled = pairs if route is None else 0 if route.teacher else round(route.share * pairs)
    pi_in, pi_out = labelled * pi["tokens"]["input"], labelled * pi["tokens"]["output"]
    add("infer", engine.model, engine_gpus, 2 * labelled, pi_in, pi_out,
        _gen_hours(engine.model, engine_gpus, pi_in, pi_out, rates))
    if route is None:
        add("pi-student", "-", 0, 0, 0, 0, None)
    else:  # the student's training (teacher sides x its prompt) is not counted here; its PI is
        student, left = route.train.get("model") or base, pairs - labelled
        s_in, s_out = left * pi["student_tokens"]["input"], left * pi["student_tokens"]["output"]
        add("pi-student", student, 1, 2 * left, s_in, s_out, _gen_hours(student, 1, s_in, s_out, rates))
    add("augment", "-", 0, 0, 0, 0, None)
    pe_in = 2 * 2 * pairs * (prompt_t + 2 * response_t + persona_t)
    add("pi-eval", judge.model, judge_gpus, 4 * pairs, pe_in, 4 * pairs, _gen_hours(judge.model, judge_gpus, pe_in, 4 * pairs, rates))
    per_example = prompt_t + persona_t + response_t
    workers = int(cfg.sft.get("num_workers", 1))
    sft_n, dpo_n = examples(cfg.sft), examples(cfg.dpo)
    sft_tokens = sft_n * per_example
    dpo_tokens = dpo_n * (2 * per_example) * 1.5  # two responses; the reference forward pass
    add("sft", base, workers, int(sft_n), sft_tokens, 0, _train_hours(base, sft_tokens, rates))
    add("dpo", base, workers, int(dpo_n), dpo_tokens, 0, _train_hours(base, dpo_tokens, rates))
    base_hours = [_train_hours(base, t, rates) for t in (sft_tokens, dpo_tokens)]
    add("baseline", base, workers, int(sft_n + dpo_n), sft_tokens + dpo_tokens, 0,
        None if None in base_hours else sum(base_hours))
    add("index", "colbert", 1, int(train), train * prompt_t, 0, None)
    add("retrieve", "colbert", 1, test, test * prompt_t, 0, None)
    answers = sum(len(run.sources) for run in cfg.generations) * test
    fewshot = sum(len(run.sources) for run in cfg.generations if run.mode == "fewshot") * test
    gen_in = answers * (prompt_t + persona_t) + fewshot * cfg.fewshot_k * per_example
    gen_out = answers * min(cfg.generation.max_tokens, response_t * 1.5)
    gen_gpus = _engine_gpus(cfg.generation_vllm or engine.vllm)
    add("generate", base, gen_gpus, answers, gen_in, gen_out, _gen_hours(base, gen_gpus, gen_in, gen_out, rates))
    sources_of = {run.model_id: run.sources for run in cfg.generations}
    verdicts = sum(len(c.persona_sources or sources_of[c.test]) for c in cfg.comparisons) * test * 2 * 2
    judge_in = verdicts * (prompt_t + 2 * response_t + persona_t + 250)  # + the template
    judge_out = verdicts * min(cfg.judge_sampling.max_tokens, 250)
    add("judge", judge.model, judge_gpus, verdicts, judge_in, judge_out,
        _gen_hours(judge.model, judge_gpus, judge_in, judge_out, rates))
    add("report", "-", 0, 0, 0, 0, None)
    total = sum(s["accelerator_hours"] or 0 for s in stages)
    return {"pairs": pairs, "test_rows": test, "sizes_from": sizes_from, "stages": stages,
            "accelerator_hours": round(total, 1), "pi_cost": pi}


def _engine_gpus(settings) -> int:
    vllm = getattr(settings, "vllm", settings)  # engine settings or VLLMSettings
    concurrency = vllm.concurrency if isinstance(vllm.concurrency, int) else max(vllm.concurrency)
    return concurrency * vllm.tensor_parallel_size if vllm.gpu else concurrency


def format_plan(plan: dict[str, Any]) -> str:
    lines = [f"{plan['pairs']} pairs, {plan['test_rows']} test rows ({plan['sizes_from']}); tokens ≈ characters / "
             f"{CHARS_PER_TOKEN}", "",
             f"{'stage':<10} {'model':<48} {'accel.':>6} {'wts GB':>6} {'requests':>9} {'input tok':>12} "
             f"{'output tok':>11} {'acc-h':>7}"]
    for s in plan["stages"]:
        hours = "-" if s["accelerator_hours"] is None else f"{s['accelerator_hours']:.2f}"
        weights = "-" if s["weights_gb"] is None else f"{s['weights_gb']:.0f}"
        lines.append(f"{s['stage']:<10} {s['model'][-48:]:<48} {str(s['accelerators']):>6} {weights:>6} {s['requests']:>9} "
                     f"{s['input_tokens']:>12,} {s['output_tokens']:>11,} {hours:>7}")
    lines += ["", f"estimated accelerator-hours: {plan['accelerator_hours']} (rough: the rates in the config's plan "
              "block; ColBERT and CPU stages not counted)"]
    cost = plan["pi_cost"]
    lines += ["", format_cost(cost["pairs"], cost["tokens"], cost["models"], cost["price_per_gpu_hour"], cost["mfu"])]
    if "student" in cost:
        from persona_ray.pipeline.cost import format_student_route

        lines += ["", format_student_route(cost["student"]["fraction"], cost["student"]["rows"], cost["student"])]
    return "\n".join(lines)

