"""Serving: persona-tailored answers over HTTP with Ray Serve.

    POST /v1/tailor   {"prompt": str, "persona": str | null, "max_tokens": int | null}
      → {"response", "finish_reason", "persona", "persona_source": "given" | "retrieved",
         "retrieved": {"row_id", "score", "prompt"} | null, "model_id"}
    GET  /healthz     → {"status": "ok", "model_id", "index_rows"}

Three deployments, each scaled on its own: `PersonaRetrieverDeployment` (the ColBERT index,
CPU), `TailoredLLMDeployment` (vLLM AsyncLLM on the persona-tailored model) and the FastAPI
`Ingress`, which validates the request, retrieves a persona when the user gave none (the top
training prompt's chosen persona, as retr-chosen) and builds the model input with the same
templates as training and evaluation (pt_templates). A persona is untrusted user text: it is
checked by the shared persona rules (persona_ray.core.persona): length-bounded, whitespace
collapsed to one line, and refused (422 with the reason) when validate_persona refuses it.

`build_app(args)` is the application builder for `serve run` and for a KubeRay RayService
(`import_path: persona_ray.serving.app:build_app`, `args:` = a ServeConfig).
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Literal

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.serve.handle import DeploymentHandle

from persona_ray.core.persona import clean_persona, validate_persona
from persona_ray.core.settings import Settings
from persona_ray.engines.settings import EngineSettings, SamplingSettings
from persona_ray.tailoring.templates import inference_input


class Autoscaling(Settings):
    """Ray Serve autoscaling range of one deployment."""

    min_replicas: int = Field(1, ge=0, description="replicas kept when idle")
    max_replicas: int = Field(2, ge=1, description="most replicas under load")
    target_ongoing_requests: float = Field(4, gt=0, description="requests per replica Serve scales towards")


class ServeConfig(Settings):
    """Persona-tailored answers over HTTP: a ColBERT retriever, the tailored model, an ingress."""

    index: str = Field(description="folder or s3:// prefix written by `persona-ray index`")
    engine: EngineSettings = EngineSettings(sampling=SamplingSettings(max_tokens=256, stop=["\nPrompt:", "\nPersona:"]))
    model_id: str = Field("PT-DPO", description="label returned with every answer")
    mode: Literal["persona", "plain"] = Field(
        "persona", description="how the model was trained: persona (PT template) or plain (no personas)")
    retrieved_side: Literal["chosen", "rejected"] = Field(
        "chosen", description="which persona of the top retrieved training row to use")
    max_prompt_chars: int = Field(8000, gt=0, description="longest prompt a request may send")
    max_persona_chars: int = Field(1000, gt=0, description="longest persona a request may send")
    max_tokens_limit: int = Field(1024, gt=0, description="the most tokens a request may ask for")
    retriever_scaling: Autoscaling = Autoscaling()
    llm_scaling: Autoscaling = Autoscaling(max_replicas=1)
    ingress_scaling: Autoscaling = Autoscaling(max_replicas=2, target_ongoing_requests=16)
    retriever_cpus: float = Field(1, gt=0, description="CPUs per retriever replica")
    llm_cpus: float = Field(1, gt=0, description="CPUs per model replica (CPU engines)")
    llm_gpus: float = Field(0, ge=0, description="GPUs per model replica (set engine.vllm.gpu too)")

    @model_validator(mode="after")
    def _servable(self):
        if self.engine.backend != "vllm":
            raise ValueError("engine.backend: the serving app runs vLLM in its own deployment; use vllm")
        if self.engine.sampling.max_tokens > self.max_tokens_limit:
            raise ValueError(f"engine.sampling.max_tokens ({self.engine.sampling.max_tokens}) exceeds "
                             f"max_tokens_limit ({self.max_tokens_limit})")
        return self


class TailorRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str
    persona: str | None = None
    max_tokens: int | None = Field(None, gt=0)


def check_request(req: TailorRequest, cfg: ServeConfig) -> tuple[str, str | None, int]:
    """(prompt, persona or None, max_tokens), or ValueError naming the field and the reason."""
    prompt = req.prompt.strip()
    if not prompt:
        raise ValueError("prompt: empty")
    if len(prompt) > cfg.max_prompt_chars:
        raise ValueError(f"prompt: {len(prompt)} characters; the limit is {cfg.max_prompt_chars}")
    persona = None
    if req.persona is not None and req.persona.strip():  # a blank persona means "retrieve one"
        persona = clean_persona(req.persona, cfg.max_persona_chars)
        checked = validate_persona(persona)  # the same rules as every other place a persona enters
        if not checked.valid:
            raise ValueError(f"persona: {checked.reason}")
        persona = checked.persona
    max_tokens = req.max_tokens or cfg.engine.sampling.max_tokens
    if max_tokens > cfg.max_tokens_limit:
        raise ValueError(f"max_tokens: {max_tokens}; the limit is {cfg.max_tokens_limit}")
    return prompt, persona, max_tokens


@serve.deployment
class PersonaRetrieverDeployment:
    def __init__(self, index: str):
        from persona_ray.retrieval.search import PersonaRetriever

        self.retriever = PersonaRetriever.load(index)

    def top(self, prompt: str) -> dict[str, Any]:
        return self.retriever.search(prompt, k=1)[0]

    def size(self) -> int:
        return len(self.retriever)


@serve.deployment
class TailoredLLMDeployment:
    def __init__(self, engine: dict):
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from persona_ray.engines.vllm_engine import engine_kwargs

        settings = EngineSettings(**engine)
        if not settings.vllm.gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.vllm.cpu_kv_cache_gib))
        self.sampling = settings.sampling
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=settings.engine_model(),
                                                                **engine_kwargs(settings.vllm)))

    async def generate(self, text: str, max_tokens: int) -> dict[str, Any]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=self.sampling.temperature, top_p=self.sampling.top_p,
                                max_tokens=max_tokens, stop=self.sampling.stop or None, seed=self.sampling.seed)
        final = None
        async for output in self.engine.generate(text, params, request_id=uuid.uuid4().hex):
            final = output
        choice = final.outputs[0]
        return {"text": choice.text.strip(), "finish_reason": choice.finish_reason or "stop"}


api = FastAPI(title="persona-ray", description="Persona-tailored responses")


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, retriever: DeploymentHandle, llm: DeploymentHandle, config: dict):
        self.retriever, self.llm = retriever, llm
        self.cfg = ServeConfig(**config)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "model_id": self.cfg.model_id, "index_rows": await self.retriever.size.remote()}

    @api.post("/v1/tailor")
    async def tailor(self, req: TailorRequest) -> dict[str, Any]:
        try:
            prompt, persona, max_tokens = check_request(req, self.cfg)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        retrieved = None
        source = "given"
        if persona is None:
            hit = await self.retriever.top.remote(prompt)
            persona, source = " ".join(hit[f"{self.cfg.retrieved_side}_persona"].split()), "retrieved"
            retrieved = {"row_id": hit["row_id"], "score": hit["score"], "prompt": hit["prompt"]}
        text = inference_input(prompt, persona, persona_template=self.cfg.mode == "persona")
        answer = await self.llm.generate.remote(text, max_tokens)
        return {"response": answer["text"], "finish_reason": answer["finish_reason"], "persona": persona,
                "persona_source": source, "retrieved": retrieved, "model_id": self.cfg.model_id}


def _options(scaling: Autoscaling, cpus: float, gpus: float = 0) -> dict[str, Any]:
    actor: dict[str, Any] = {"num_cpus": cpus}
    if gpus:
        actor["num_gpus"] = gpus
    return {"autoscaling_config": scaling.model_dump(), "ray_actor_options": actor}


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder: `serve run persona_ray.serving.app:build_app index=...` or a RayService."""
    cfg = ServeConfig(**args)
    retriever = PersonaRetrieverDeployment.options(**_options(cfg.retriever_scaling, cfg.retriever_cpus)).bind(
        cfg.index)
    llm = TailoredLLMDeployment.options(**_options(cfg.llm_scaling, cfg.llm_cpus, cfg.llm_gpus)).bind(
        cfg.engine.model_dump())
    return Ingress.options(**_options(cfg.ingress_scaling, 0.1)).bind(retriever, llm, cfg.model_dump())
