"""What the serving app serves and how: models, limits, keys, scaling (YAML: cluster/serve*.yaml,
or the `args:` of a KubeRay RayService)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from persona_ray.core.settings import Settings
from persona_ray.engines.settings import EngineSettings, SamplingSettings


class Autoscaling(Settings):
    """Ray Serve autoscaling range of one deployment."""

    min_replicas: int = Field(1, ge=0, description="replicas kept when idle")
    max_replicas: int = Field(2, ge=1, description="most replicas under load")
    target_ongoing_requests: float = Field(4, gt=0, description="requests per replica Serve scales towards")
    upscale_delay_s: float = Field(5.0, ge=0, description="seconds of load above target before adding a replica")
    downscale_delay_s: float = Field(30.0, ge=0, description="seconds below target before removing a replica")


class ServedModel(Settings):
    """One model clients choose by its `name` (the OpenAI `model` field)."""

    name: str = Field(description="the id clients send as `model`, listed by GET /v1/models")
    model: str | None = Field(None, description="model folder; none: engine.model. Models with the same folder "
                              "share one engine (one LLM deployment)")
    adapter: str | None = Field(None, description="a LoRA adapter folder (PEFT) over `model`, served by vLLM's LoRA "
                                "support in the shared engine; none: the model itself")
    mode: Literal["persona", "plain"] = Field(
        "persona", description="how it was trained: persona (the PT template, a Persona line) or plain (no personas; "
        "a given persona is appended to the prompt in words, as in the paper's §5 baseline)")


class ServeConfig(Settings):
    """Persona-tailored answers over HTTP: a ColBERT retriever, the tailored model(s), an ingress."""

    index: str = Field(description="folder or s3:// prefix written by `persona-ray index`")
    engine: EngineSettings = EngineSettings(sampling=SamplingSettings(max_tokens=256, stop=["\nPrompt:", "\nPersona:"]))
    model_id: str = Field("PT-DPO", description="the name of the one served model when `models` is empty")
    mode: Literal["persona", "plain"] = Field("persona", description="its mode when `models` is empty")
    models: list[ServedModel] = Field(
        default_factory=list, description="the served models; empty: one, engine.model named `model_id` in `mode`")
    retrieved_side: Literal["chosen", "rejected"] = Field(
        "chosen", description="which persona of a retrieved training row to use")
    retrieved_detail: Literal["score", "row_id"] = Field(
        "score", description="what an answer says of a retrieved persona: score (its score and rank, and why "
        "better hits were skipped) or row_id (their training row ids too, for debugging); never the training text, "
        "which is another user's")
    retrieve_k: int = Field(5, ge=1, le=50, description="hits searched for a valid persona (an invalid top hit "
                            "falls back to the next valid one)")
    auth: Literal["api_key", "none"] = Field(
        "api_key", description="api_key: every route but the health checks needs 'Authorization: Bearer <key>'; "
        "none: open (the CLI allows it on a loopback address only)")
    api_keys_file: str | None = Field(None, description="file with one API key a line (e.g. a mounted Kubernetes "
                                      "Secret); keys are never logged")
    api_keys_env: str = Field("PERSONA_RAY_API_KEYS", description="environment variable with comma-separated API "
                              "keys (read in the ingress replica)")
    max_body_bytes: int = Field(65536, gt=0, description="larger request bodies get 413 before they are parsed")
    max_prompt_chars: int = Field(8000, gt=0, description="longest prompt a request may send (characters; the "
                                  "model's context in tokens is checked too)")
    max_persona_chars: int = Field(1000, gt=0, description="longest persona a request may send")
    max_tokens_limit: int = Field(1024, gt=0, description="the most tokens a request may ask for")
    request_timeout_s: float = Field(120, gt=0, description="a model call not answered in this time gets 503")
    health_timeout_s: float = Field(2, gt=0, description="how long the ingress's probe of a deployment, sent "
                                    "each second, waits for an answer")
    health_stale_s: float = Field(10, gt=0, description="a deployment that has answered nothing (a request or a "
                                  "probe) for this long is not ready (/healthz)")
    retry_after_s: int = Field(5, ge=1, description="the Retry-After of a 503")
    health_check_period_s: float = Field(2, gt=0, description="how often Serve checks each replica (a dead "
                                         "engine is replaced sooner)")
    llm_max_ongoing_requests: int = Field(64, ge=1, description="requests one model replica takes at once (vLLM "
                                          "batches them; Serve queues the rest)")
    retriever_scaling: Autoscaling = Autoscaling()
    llm_scaling: Autoscaling = Autoscaling(max_replicas=1)
    ingress_scaling: Autoscaling = Autoscaling(max_replicas=2, target_ongoing_requests=16)
    ingress_max_ongoing_requests: int = Field(
        256, ge=1, description="requests one ingress replica takes at once; it mostly waits on the models, and a "
        "/healthz poll queued behind Serve's default of 5 took seconds under 16 clients")
    retriever_cpus: float = Field(1, gt=0, description="CPUs per retriever replica")
    ingress_cpus: float = Field(0.1, gt=0, description="CPUs per ingress replica")
    llm_cpus: float = Field(1, gt=0, description="CPUs per model replica (CPU engines)")
    llm_gpus: float = Field(0, ge=0, description="GPUs per model replica (set engine.vllm.gpu too)")

    @model_validator(mode="after")
    def _servable(self):
        if self.engine.backend != "vllm":
            raise ValueError("engine.backend: the serving app runs vLLM in its own deployment; use vllm")
        if self.engine.sampling.max_tokens > self.max_tokens_limit:
            raise ValueError(f"engine.sampling.max_tokens ({self.engine.sampling.max_tokens}) exceeds "
                             f"max_tokens_limit ({self.max_tokens_limit})")
        names = [m.name for m in self.served_models()]
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be distinct, got {names}")
        return self

    def served_models(self) -> list[ServedModel]:
        """The served models, each with its model folder filled in."""
        models = self.models or [ServedModel(name=self.model_id, mode=self.mode)]
        return [m.model_copy(update={"model": m.model or self.engine.model}) for m in models]

    def with_absolute_paths(self, base: str) -> "ServeConfig":
        """The config with relative local paths (index, model folders, adapters, key file) made
        absolute against `base`: Serve replicas run in other folders. Names like 'tiny' and s3://
        prefixes stay as they are."""
        import os

        def resolve(path: str | None) -> str | None:
            if path is None or "://" in path or os.path.isabs(path) or not ("/" in path or path.startswith(".")):
                return path
            return os.path.normpath(os.path.join(base, path))

        models = [m.model_copy(update={"model": resolve(m.model), "adapter": resolve(m.adapter)}) for m in self.models]
        return self.model_copy(update={"index": resolve(self.index), "models": models,
                                       "api_keys_file": resolve(self.api_keys_file),
                                       "engine": self.engine.model_copy(update={"model": resolve(self.engine.model)})})

    def engines(self) -> dict[str, dict[str, str]]:
        """{model folder: {served name: adapter folder}} — one engine per folder, its LoRA adapters."""
        found: dict[str, dict[str, str]] = {}
        for m in self.served_models():
            adapters = found.setdefault(m.model, {})
            if m.adapter:
                adapters[m.name] = m.adapter
        return found
