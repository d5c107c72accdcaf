"""Any OpenAI-compatible HTTP endpoint as an engine.

A small pool of Ray actors each keeps up to `max_concurrency` requests in flight. Transient
failures (connection errors, timeouts, 429 and 5xx) are retried with exponential backoff; a
request that still fails becomes an error row. Authentication failures (401/403) and an
endpoint that cannot be reached at all stop the job with a clear message instead.
The API key is read from the environment variable named in the config and is never logged.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import numpy as np
import ray.data

from persona_ray.core.errors import UserError
from persona_ray.engines.settings import OpenAISettings, SamplingSettings

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


class EngineAuthError(UserError):
    """The endpoint refused our credentials."""


class EngineConnectionError(UserError):
    """The endpoint could not be reached after every retry."""


class EngineNotFoundError(UserError):
    """Wrong base URL or model name: every request would fail the same way."""


def request_body(model: str, prompt: str, sampling: SamplingSettings, cfg: OpenAISettings,
                 regex: str | None, choice: list[str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "stop": list(sampling.stop) or None,
    }
    if sampling.repetition_penalty != 1.0:
        body["repetition_penalty"] = sampling.repetition_penalty  # vLLM's server takes it; OpenAI's does not
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if cfg.api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if cfg.structured_outputs and (regex is not None or choice is not None):
        body["structured_outputs"] = {"regex": regex} if regex is not None else {"choice": list(choice)}
    return body


def parse_response(payload: dict[str, Any], api: str) -> dict[str, Any]:
    choice = payload["choices"][0]
    text = choice["message"]["content"] if api == "chat" else choice["text"]
    usage = payload.get("usage") or {}
    finish = choice.get("finish_reason") or "stop"
    return {
        "generated_text": text or "",
        "num_input_tokens": int(usage.get("prompt_tokens") or 0),
        "num_output_tokens": int(usage.get("completion_tokens") or 0),
        "finish_reason": "length" if finish == "length" else "stop",
        "error": "",
    }


class OpenAICaller:
    """Ray Data callable class: one batch of rows in, the same rows plus generations out."""

    def __init__(self, model: str, sampling: SamplingSettings, cfg: OpenAISettings, regex=None, choice=None):
        import httpx

        self.model, self.sampling, self.cfg, self.regex, self.choice = model, sampling, cfg, regex, choice
        self.url = cfg.base_url.rstrip("/") + ("/chat/completions" if cfg.api == "chat" else "/completions")
        self.client = httpx.AsyncClient(headers=cfg.auth_headers(), timeout=cfg.timeout_s)
        self.loop = asyncio.new_event_loop()

    async def _one(self, prompt: str, gate: asyncio.Semaphore) -> dict[str, Any]:
        import httpx

        body = request_body(self.model, prompt, self.sampling, self.cfg, self.regex, self.choice)
        delay = self.cfg.backoff_s
        last_problem = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                await asyncio.sleep(delay * (1 + random.random() / 4))
                delay *= 2
            try:
                async with gate:
                    response = await self.client.post(self.url, json=body)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                last_problem = f"cannot reach {self.url}: {type(exc).__name__}"
                continue
            if response.status_code in (401, 403):
                raise EngineAuthError(
                    f"{self.url} answered {response.status_code}: check the API key in "
                    f"${self.cfg.api_key_env} and that it may use model '{self.model}'"
                )
            if response.status_code == 404:
                raise EngineNotFoundError(
                    f"{self.url} answered 404 (check base_url and the model name '{self.model}'): "
                    f"{response.text[:300]}"
                )
            if response.status_code in RETRYABLE_STATUS:
                last_problem = f"HTTP {response.status_code} from {self.url}"
                continue
            if response.status_code != 200:
                return _error_row(f"HTTP {response.status_code}: {response.text[:300]}")
            try:
                return parse_response(response.json(), self.cfg.api)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                return _error_row(f"malformed response: {type(exc).__name__}: {exc}")
        if last_problem.startswith("cannot reach"):
            raise EngineConnectionError(f"{last_problem} after {self.cfg.max_retries} retries")
        return _error_row(f"{last_problem} after {self.cfg.max_retries} retries")

    async def _all(self, prompts: list[str]) -> list[dict[str, Any]]:
        gate = asyncio.Semaphore(self.cfg.max_concurrency)
        return await asyncio.gather(*(self._one(p, gate) for p in prompts))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts = [str(p) for p in batch["prompt"]]
        results = self.loop.run_until_complete(self._all(prompts))
        out = {k: v for k, v in batch.items() if k != "prompt"}
        for column in ("generated_text", "finish_reason", "error"):
            out[column] = np.array([r[column] for r in results], dtype=object)
        for column in ("num_input_tokens", "num_output_tokens"):
            out[column] = np.array([r[column] for r in results], dtype=np.int64)
        return out


def _error_row(message: str) -> dict[str, Any]:
    return {"generated_text": "", "num_input_tokens": 0, "num_output_tokens": 0, "finish_reason": "error",
            "error": message}


def openai_generate(ds: ray.data.Dataset, model: str, sampling: SamplingSettings, cfg: OpenAISettings, *, regex=None,
                    choice=None, prompt_format: str = "completion") -> ray.data.Dataset:
    if prompt_format == "chat" and cfg.api != "chat":
        cfg = cfg.model_copy(update={"api": "chat"})
    return ds.map_batches(
        OpenAICaller,
        fn_constructor_kwargs={"model": model, "sampling": sampling, "cfg": cfg, "regex": regex, "choice": choice},
        batch_size=cfg.batch_size,
        batch_format="numpy",
        concurrency=cfg.num_callers,
        num_cpus=0.5,
    )
