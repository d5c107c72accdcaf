"""Serving: persona-tailored answers over HTTP with Ray Serve, in the OpenAI API.

    POST /v1/chat/completions   {"model", "messages": [one user message], "persona"?, "stream"?, ...}
    POST /v1/completions        {"model", "prompt", "persona"?, "stream"?, ...}
    GET  /v1/models             the served models (PT-DPO, the no-persona baseline, ...)
    POST /v1/tailor             {"prompt", "persona"?, "max_tokens"?, "model"?} (the project's own)
    GET  /healthz               ready: every deployment runs and answered lately (503 + Retry-After when not)
    GET  /livez                 alive: the ingress answers

The persona is an extra body field (`extra_body={"persona": ...}` in the official `openai`
client); without one it is retrieved: the first valid persona among the top `retrieve_k`
training prompts (ColBERT). Every answer says which persona it was tailored to and where it
came from: extra fields `persona`, `persona_source` (given | retrieved | none) and `retrieved`
(score, rank, and why better hits were skipped; row ids only where the config asks for them, never
another user's training text). No interactive docs or OpenAPI schema are served: nothing but the
health checks answers without a key.

Deployments (deployments.py): the retriever, one LLM engine per model folder (served models over
the same folder share it, as LoRA adapters), and this FastAPI ingress. The ingress checks every
request before a model sees it (requests.py): an API key (auth.py), the body size, strict
types, Unicode, control characters, a given persona through the shared persona validator, the
prompt against the model's context in tokens; each refusal is a 4xx that names the field. A
deployment that dies or does not answer in time makes its requests 503 with Retry-After, at once
(and those waiting on it released) while Serve's controller shows no running replica of it,
checked every second; /healthz says not ready until it runs and answers again. /healthz reads
what the ingress keeps (running replicas, when each deployment last answered a request or the
probe sent each second), so a readiness probe answers at once however busy the replicas are.

`build_app(args)` is the application builder for `serve run` and for a KubeRay RayService
(`import_path: persona_ray.serving.app:build_app`, `args:` = a ServeConfig).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from persona_ray.core import persona_gate
from persona_ray.serving import openai_format as oai
from persona_ray.serving.auth import APIKeys
from persona_ray.serving.config import Autoscaling, ServeConfig, ServedModel
from persona_ray.serving.deployments import PersonaRetrieverDeployment, TailoredLLMDeployment
from persona_ray.serving.metrics import ServingMetrics
from persona_ray.serving.requests import (ChatRequest, CompletionRequest, RequestError, TailorRequest, chat_prompt,
                                          check_persona, check_prompt, pick_retrieved, refusal_of,
                                          sampling_of)
from persona_ray.tailoring.templates import inference_input

__all__ = ["ServeConfig", "ServedModel", "Autoscaling", "build_app"]
log = logging.getLogger("ray.serve")
DOWN = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)  # the replica is gone


_FIELDS = {"model", "messages", "prompt", "persona", "max_tokens", "max_completion_tokens", "temperature", "top_p",
           "stop", "n", "stream", "stream_options", "user"}  # refusal labels: known fields, else "body"


class Unavailable(Exception):
    """A deployment that cannot answer now (503 with Retry-After)."""


# Helpers the ingress uses are defined above it: Serve pickles the decorated class when the module
# is imported, with the module's globals as they are at that moment.
async def _awaitable(response):
    return await response


def _error(status: int, message: str, kind: str, param: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(oai.error(message, kind, param=param), status_code=status, headers=headers)


# FastAPI's /docs, /redoc and /openapi.json would answer without a key: not served.
api = FastAPI(title="persona-ray", description="Persona-tailored responses, OpenAI-compatible",
              docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, retriever: DeploymentHandle, llms: dict[str, DeploymentHandle], config: dict):
        self.cfg = ServeConfig(**config)
        self.models = {m.name: m for m in self.cfg.served_models()}
        self.retriever, self.llms = retriever, llms  # llms: model folder -> handle
        self.keys = APIKeys.load(self.cfg.api_keys_file, self.cfg.api_keys_env) if self.cfg.auth == "api_key" else None
        self.down: set[str] = set()  # deployments with no running replica (or whose replica just died)
        self.pending: dict[str, set[asyncio.Future]] = defaultdict(set)  # calls waiting on each deployment
        self.watcher: asyncio.Task | None = None
        self.prober: asyncio.Task | None = None
        self.answered: dict[str, float] = {}  # deployment -> when it last answered (time.monotonic)
        self.metrics = ServingMetrics()
        persona_gate.warm_up()  # the gate's encoder now, not inside the first request with a persona

    def __del__(self) -> None:  # Serve calls it when the replica shuts down
        for task in (self.watcher, self.prober):
            if task is not None:
                task.cancel()

    # -- health --------------------------------------------------------------------------------
    @api.get("/livez")
    async def livez(self) -> dict[str, str]:
        return {"status": "alive"}

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """Ready when every deployment has a running replica and has answered something (a request,
        or the probe sent each second) within health_stale_s. Told from what the ingress keeps, so
        that a poll never waits behind the requests queued at a busy replica."""
        self._watch_replicas()
        if not self.answered:  # the first poll after start: nothing known yet, so ask now
            await self._probe_all()
        now, states = time.monotonic(), {}
        for name in self._deployments():
            if name in self.down:
                states[name] = "no running replica"
            elif name not in self.answered:
                states[name] = f"no answer yet (each probe waits {self.cfg.health_timeout_s:g} s)"
            elif now - self.answered[name] > self.cfg.health_stale_s:
                states[name] = f"no answer for {now - self.answered[name]:.0f} s"
            else:
                states[name] = "ready"
        ready = all(state == "ready" for state in states.values())
        return JSONResponse({"status": "ready" if ready else "not ready", "deployments": states},
                            status_code=200 if ready else 503,
                            headers=None if ready else {"Retry-After": str(self.cfg.retry_after_s)})

    # -- OpenAI API ----------------------------------------------------------------------------
    @api.get("/v1/models")
    async def list_models(self, request: Request) -> JSONResponse:
        return await self._guarded(request, None, self._models)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._guarded(request, ChatRequest, self._chat)

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._guarded(request, CompletionRequest, self._completion)

    @api.post("/v1/tailor")
    async def tailor(self, request: Request):
        return await self._guarded(request, TailorRequest, self._tailor)

    async def _models(self, _: None) -> JSONResponse:
        return JSONResponse(oai.model_list([m.model_dump() for m in self.models.values()]))

    async def _chat(self, req: ChatRequest):
        return await self._answer("chat", req.model, chat_prompt(req.messages), req.persona, sampling_of(req, self.cfg),
                                  req.stream, bool(req.stream_options and req.stream_options.include_usage))

    async def _completion(self, req: CompletionRequest):
        return await self._answer("text", req.model, req.prompt, req.persona, sampling_of(req, self.cfg),
                                  req.stream, bool(req.stream_options and req.stream_options.include_usage))

    async def _tailor(self, req: TailorRequest) -> JSONResponse:
        model = req.model or next(iter(self.models))
        sampling = sampling_of(CompletionRequest(model=model, prompt=req.prompt, max_tokens=req.max_tokens), self.cfg)
        served, chosen, text = await self._prepare(model, req.prompt, req.persona)
        answer = await self._generate(served, text, sampling)
        return JSONResponse({"response": answer["text"], "finish_reason": answer["finish_reason"], **chosen,
                             "model_id": served.name})

    # -- one request, start to end ---------------------------------------------------------------
    async def _guarded(self, request: Request, schema: type[BaseModel] | None, handler):
        """Key, body, types; then the handler; every answer counted (metrics.py)."""
        started = time.perf_counter()
        response, model, field = await self._checked(request, schema, handler)
        self.metrics.answered(request.url.path, model, response.status_code, 1000 * (time.perf_counter() - started),
                              field)
        return response

    async def _checked(self, request: Request, schema: type[BaseModel] | None, handler):
        """(the response, the served model it names or "-", the field a refusal names). Every refusal
        is an OpenAI-style error with a status."""
        model = "-"
        try:
            if self.keys is not None and not self.keys.allows(request.headers.get("authorization")):
                return _error(401, "a valid API key is needed: 'Authorization: Bearer <key>'", "authentication_error",
                              headers={"WWW-Authenticate": "Bearer"}), model, "api_key"
            body = None if schema is None else schema.model_validate(await self._json(request))
            named = getattr(body, "model", None)
            model = named if named in self.models else "-" if named is None else "unknown"  # bounded label values
            return await handler(body), model, None
        except RequestError as err:
            kind = "not_found_error" if err.status == 404 else "invalid_request_error"
            return _error(err.status, str(err), kind, param=err.param), model, err.param or "body"
        except ValidationError as err:
            refusal = refusal_of(err.errors())
            field = (refusal.param or "").split(".")[0]  # the metrics label: one of a bounded set
            return (_error(422, str(refusal), "invalid_request_error", param=refusal.param), model,
                    field if field in _FIELDS else "body")
        except Unavailable as err:
            return _error(503, str(err), "service_unavailable",
                          headers={"Retry-After": str(self.cfg.retry_after_s)}), model, None
        except Exception as exc:  # a bug, not the client's fault: say so without details
            log.exception("request failed")
            return _error(500, f"internal error ({type(exc).__name__})", "server_error"), model, None

    async def _json(self, request: Request) -> Any:
        """The body as JSON; over max_body_bytes: 413, the rest drained unkept (so the client reads
        the answer), and a body past 16 times the limit cut off."""
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if kind != "application/json" and not kind.endswith("+json"):
            # A form or text body is not parsed as JSON on a guess: say what to send instead.
            raise RequestError(f"content-type: {kind[:60]} is not JSON; send the body as application/json",
                               status=415, param="content-type")
        limit = self.cfg.max_body_bytes
        body, size = bytearray(), 0
        async for piece in request.stream():
            size += len(piece)
            if size <= limit:
                body += piece
            elif size > 16 * limit:
                break
        if size > limit:
            declared = request.headers.get("content-length", "")
            seen = (f"{declared} bytes" if declared.isdigit() else
                    f"{size} bytes" if size <= 16 * limit else f"over {16 * limit} bytes")
            raise RequestError(f"body: {seen}; the limit is {limit} bytes", status=413)
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(f"body: not valid JSON ({err})") from None

    async def _answer(self, kind: str, model: str, prompt: str, persona: str | None, sampling: dict,
                      stream: bool, include_usage: bool):
        served, chosen, text = await self._prepare(model, prompt, persona)
        request_id = oai.new_id(kind)
        if not stream:
            answer = await self._generate(served, text, sampling)
            return JSONResponse(oai.completion(kind, request_id, served.name, answer, chosen))
        llm, opened = self.llms[served.model], {}

        def send():  # called by _ask only when the engine is up, so nothing is queued for a dead one
            opened["pieces"] = llm.options(stream=True).stream.remote(text, sampling, served.name)
            return opened["pieces"].__anext__()

        first = await self._ask(llm.deployment_name, send, self.cfg.request_timeout_s)  # refusals come first
        pieces = opened["pieces"]
        if "refused" in first:
            raise RequestError(first["refused"], param="prompt")
        events = self._events(kind, request_id, served.name, chosen, first, pieces, include_usage)
        return StreamingResponse(events, media_type="text/event-stream")

    async def _events(self, kind: str, request_id: str, model: str, chosen: dict, first: dict,
                      pieces, include_usage: bool) -> AsyncIterator[str]:
        yield oai.sse(oai.chunk(kind, request_id, model, text="" if kind == "chat" else None, first=True, extra=chosen))
        piece = first
        try:
            while "finish_reason" not in piece:
                yield oai.sse(oai.chunk(kind, request_id, model, text=piece["text"]))
                piece = await asyncio.wait_for(pieces.__anext__(), self.cfg.request_timeout_s)
        except Exception as exc:  # StopAsyncIteration, a timeout, a dead replica, ...
            # The status line has gone: say it in the stream, as OpenAI servers do, and stop.
            yield oai.sse(oai.error(f"the model stopped answering ({type(exc).__name__})", "service_unavailable"))
            return
        self.metrics.generated(model, piece["completion_tokens"])
        yield oai.sse(oai.chunk(kind, request_id, model, finish_reason=piece["finish_reason"]))
        if include_usage:
            yield oai.sse(oai.chunk(kind, request_id, model,
                                    usage_of=oai.usage(piece["prompt_tokens"], piece["completion_tokens"])))
        yield oai.sse("[DONE]")

    async def _prepare(self, model: str, prompt: str, persona: str | None) -> tuple[ServedModel, dict, str]:
        """(the served model, the persona it answers for with its source, the model input)."""
        served = self.models.get(model)
        if served is None:
            raise RequestError(f"model: {model!r} is not served; GET /v1/models lists {sorted(self.models)}",
                               status=404, param="model")
        prompt = check_prompt(prompt, self.cfg)
        # The gate encodes the persona (~15 ms on a CPU thread): off the event loop, which serves /healthz too.
        chosen = await self._persona(prompt, await asyncio.to_thread(check_persona, persona, self.cfg))
        self.metrics.persona(chosen["persona_source"])
        return served, chosen, inference_input(prompt, chosen["persona"], persona_template=served.mode == "persona")

    async def _generate(self, served: ServedModel, text: str, sampling: dict) -> dict:
        llm = self.llms[served.model]
        answer = await self._ask(llm.deployment_name, lambda: llm.generate.remote(text, sampling, served.name),
                                 self.cfg.request_timeout_s)
        if "refused" in answer:
            raise RequestError(answer["refused"], param="prompt")
        self.metrics.generated(served.name, answer["completion_tokens"])
        return answer

    async def _persona(self, prompt: str, given: str | None) -> dict[str, Any]:
        if given is not None:
            return {"persona": given, "persona_source": "given", "retrieved": None}
        retriever = self.retriever
        hits = await self._ask(retriever.deployment_name, lambda: retriever.hits.remote(prompt, self.cfg.retrieve_k),
                               self.cfg.request_timeout_s)
        persona, retrieved = await asyncio.to_thread(pick_retrieved, hits, self.cfg.retrieved_side, self.cfg)
        return {"persona": persona, "persona_source": "retrieved" if persona else "none", "retrieved": retrieved}

    async def _ask(self, name: str, send, timeout: float):
        """The answer of `send()` (a call to deployment `name`), or Unavailable: at once, nothing sent,
        while it has no running replica; when its replica dies under the call; when it does not
        answer within `timeout`."""
        self._watch_replicas()
        if name in self.down:
            raise Unavailable(f"{name} is restarting; retry shortly")
        call = asyncio.ensure_future(_awaitable(send()))
        self.pending[name].add(call)
        try:
            answer = await asyncio.wait_for(call, timeout)
            self.answered[name] = time.monotonic()
            return answer
        except BackPressureError:
            raise Unavailable(f"{name} is at capacity; retry shortly") from None
        except DOWN as exc:
            self._mark_down(name)
            raise Unavailable(f"{name} is unavailable ({type(exc).__name__}); retry shortly") from None
        except asyncio.TimeoutError:
            raise Unavailable(f"{name} did not answer within {timeout:g} s") from None
        except asyncio.CancelledError:
            if name in self.down:  # cancelled by _mark_down: the replica went away while it waited
                raise Unavailable(f"{name} went down while the request waited; retry shortly") from None
            raise
        finally:
            self.pending[name].discard(call)

    def _mark_down(self, name: str) -> None:
        """Answer 503 for `name` until its replicas run again; calls waiting on it stop waiting
        (Serve would hold them until a new replica is up)."""
        if name in self.down:
            return
        self.down.add(name)
        log.warning("deployment %s is down; answering 503 until a replica runs again", name)
        for call in list(self.pending[name]):
            call.cancel()

    def _watch_replicas(self) -> None:
        loop = asyncio.get_running_loop()
        if self.watcher is None or self.watcher.done():
            self.watcher = loop.create_task(self._watch())
        if self.prober is None or self.prober.done():
            self.prober = loop.create_task(self._probe())

    async def _probe(self) -> None:
        """Once a second, every deployment is asked whether it is ready: what /healthz reads when no
        request has reached a deployment lately."""
        while True:
            await asyncio.sleep(1.0)
            await self._probe_all()

    async def _probe_all(self) -> None:
        async def probe(name: str, handle: DeploymentHandle) -> None:
            if name in self.down:
                return
            try:
                await asyncio.wait_for(_awaitable(handle.ready.remote()), self.cfg.health_timeout_s)
                self.answered[name] = time.monotonic()
            except DOWN:
                self._mark_down(name)
            except Exception:  # noqa: BLE001 - busy or failing: no answer, which /healthz counts
                pass

        await asyncio.gather(*(probe(name, handle) for name, handle in self._deployments().items()))

    async def _watch(self) -> None:
        """Once a second, from Serve's controller: a deployment with no running replica is down,
        one with a running replica again is back."""
        while True:
            running = await self._running_replicas()
            if running:
                for name in self._deployments():
                    if running.get(name, 0) == 0:
                        self._mark_down(name)
                    elif name in self.down:
                        self.down.discard(name)
                        log.warning("deployment %s is back", name)
            await asyncio.sleep(1.0)

    async def _running_replicas(self) -> dict[str, int]:
        """{deployment name: RUNNING replicas} of this application; {} when the controller does not say."""
        try:
            status = await asyncio.to_thread(serve.status)
            deployments = status.applications[serve.get_replica_context().app_name].deployments
            return {name: d.replica_states.get("RUNNING", 0) for name, d in deployments.items()}
        except Exception as exc:  # the controller is busy, or this replica is shutting down: no news
            log.warning("could not read the Serve status (%s)", type(exc).__name__)
            return {}

    def _deployments(self) -> dict[str, DeploymentHandle]:
        """{deployment name: handle} of the retriever and every engine."""
        return {h.deployment_name: h for h in (self.retriever, *self.llms.values())}


def _options(cfg: ServeConfig, scaling: Autoscaling, cpus: float, gpus: float = 0, **more) -> dict[str, Any]:
    actor: dict[str, Any] = {"num_cpus": cpus}
    if gpus:
        actor["num_gpus"] = gpus
    return {"autoscaling_config": scaling.model_dump(), "ray_actor_options": actor,
            "health_check_period_s": cfg.health_check_period_s, **more}


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder: `serve run persona_ray.serving.app:build_app index=...` or a RayService."""
    cfg = ServeConfig(**args)
    retriever = PersonaRetrieverDeployment.options(**_options(cfg, cfg.retriever_scaling, cfg.retriever_cpus)).bind(
        cfg.index)
    llms = {}
    for number, (folder, adapters) in enumerate(cfg.engines().items()):
        llms[folder] = TailoredLLMDeployment.options(
            name=f"TailoredLLM{number}", max_ongoing_requests=cfg.llm_max_ongoing_requests,
            **_options(cfg, cfg.llm_scaling, cfg.llm_cpus, cfg.llm_gpus)).bind(folder, adapters, cfg.engine.model_dump())
    return Ingress.options(**_options(cfg, cfg.ingress_scaling, cfg.ingress_cpus,
                                      max_ongoing_requests=cfg.ingress_max_ongoing_requests)).bind(
        retriever, llms, cfg.model_dump())
