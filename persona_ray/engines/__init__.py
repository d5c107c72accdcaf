"""Text-generation engines behind one interface.

    generate(ds, EngineSettings, regex=..., choice=...) -> ds      (or EngineSettings.generate)

Input rows carry a "prompt" column (plain text; sent as one user message when the engine is in
chat mode) and any other columns, which pass through untouched -- except names Ray Data LLM
uses for itself (RESERVED_COLUMNS; "model", for one, selects a LoRA adapter). Output rows add:
    generated_text     str   what the model wrote ("" on error)
    num_input_tokens   int   prompt tokens (0 if unknown)
    num_output_tokens  int   generated tokens
    finish_reason      str   "stop" | "length" | "error"
    error              str   "" or the reason the request failed
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ray.data

if TYPE_CHECKING:
    from persona_ray.engines.settings import EngineSettings, SamplingSettings

RESERVED_COLUMNS = ("model", "request_id", "messages", "sampling_params", "generated_text", "metrics",
                    "prompt_token_ids", "tokenized_prompt", "params", "batch_uuid")
OUTPUT_COLUMNS = ("generated_text", "num_input_tokens", "num_output_tokens", "finish_reason", "error")


def generate(ds: ray.data.Dataset, settings: EngineSettings, *, regex: str | None = None,
             choice: list[str] | None = None, sampling: SamplingSettings | None = None) -> ray.data.Dataset:
    """Run every row's prompt through the engine of `settings`. `regex`/`choice` constrain the
    output; `sampling` replaces settings.sampling (e.g. for re-asks at a higher temperature)."""
    model, sampling = settings.engine_model(), sampling or settings.sampling
    # An engine task hands back its rows only when its whole input block is done, and a block read
    # from one file can hold every row of the job: cut blocks to one engine batch, so results
    # flow out (and reach storage) steadily and a crash loses only the blocks in flight.
    batch_size = settings.vllm.batch_size if settings.backend == "vllm" else settings.openai.batch_size
    ds = ds.repartition(target_num_rows_per_block=batch_size, strict=True)
    if settings.backend == "vllm":
        from persona_ray.engines.vllm_engine import vllm_generate

        return vllm_generate(ds, model, sampling, settings.vllm, regex=regex, choice=choice,
                             prompt_format=settings.prompt_format)
    from persona_ray.engines.openai_engine import openai_generate

    return openai_generate(ds, model, sampling, settings.openai, regex=regex, choice=choice,
                           prompt_format=settings.prompt_format)
