"""Typed settings for the text-generation engines (shared by inference, judging and generation)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingConfig(_Strict):
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(128, gt=0)
    stop: list[str] = Field(default_factory=lambda: ["\n"])
    seed: int | None = 0


class VLLMConfig(_Strict):
    """vLLM engine actors driven by Ray Data (ray.data.llm)."""

    concurrency: int | tuple[int, int] = 1  # engine actors; (min, max) autoscales
    batch_size: int = Field(64, gt=0)  # rows per Ray Data batch sent to one engine
    tensor_parallel_size: int = Field(1, gt=0)
    max_model_len: int = Field(4096, gt=0)
    enable_prefix_caching: bool = True
    gpu: bool = False
    enforce_eager: bool | None = None  # default: eager on CPU (starts in seconds), compiled on GPU
    dtype: str = "auto"
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    cpu_kv_cache_gib: int = Field(1, gt=0)  # VLLM_CPU_KVCACHE_SPACE
    cpus_per_engine: int = Field(1, gt=0)  # CPU engines: Ray CPUs reserved per engine worker
    max_num_seqs: int | None = None
    engine_kwargs: dict = Field(default_factory=dict)  # passed to vLLM as is, last

    @field_validator("concurrency")
    @classmethod
    def _positive(cls, value):
        values = value if isinstance(value, tuple) else (value,)
        if any(v < 1 for v in values) or (isinstance(value, tuple) and value[0] > value[1]):
            raise ValueError("concurrency must be a positive int or (min, max) with 1 <= min <= max")
        return value


class OpenAIConfig(_Strict):
    """Any OpenAI-compatible HTTP endpoint: a hosted API, `vllm serve`, Ray Serve LLM."""

    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable, never from config
    api: Literal["completions", "chat"] = "completions"
    max_concurrency: int = Field(16, gt=0)  # requests in flight per caller actor
    num_callers: int = Field(1, gt=0)  # Ray actors issuing requests
    batch_size: int = Field(64, gt=0)
    max_retries: int = Field(5, ge=0)
    backoff_s: float = Field(0.5, ge=0.0)  # first retry delay; doubles each time
    timeout_s: float = Field(120.0, gt=0.0)
    # vLLM-style servers accept {"structured_outputs": {"regex": ...}}; hosted APIs may not.
    structured_outputs: bool = True
    context_tokens: int = Field(8192, gt=0)  # context length when no tokenizer can be loaded
