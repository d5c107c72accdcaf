"""The two back-end deployments of the serving app; the ingress (app.py) calls them.

    PersonaRetrieverDeployment   the ColBERT index: hits(prompt, k), size(), ready()
    TailoredLLMDeployment        one vLLM AsyncLLM engine over one model folder, with the served
                                 models' LoRA adapters: generate(...), stream(...), ready()

The LLM checks a request against the model's context in tokens (its own tokenizer) before the
engine sees it, and answers {"refused": reason} for an over-long prompt (422 at the ingress): a
client's mistake, not an engine error, so no traceback in the replica's log. Serve's own health check (check_health) asks the engine too, so a dead engine gets its
replica replaced.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

from ray import serve

from persona_ray.engines.settings import EngineSettings


@serve.deployment
class PersonaRetrieverDeployment:
    def __init__(self, index: str):
        from persona_ray.retrieval.search import PersonaRetriever

        self.retriever = PersonaRetriever.load(index)

    def hits(self, prompt: str, k: int) -> list[dict[str, Any]]:
        return self.retriever.search(prompt, k=k)

    def size(self) -> int:
        return len(self.retriever)

    def ready(self) -> bool:
        return True


def _lora_rank(adapter: str) -> int:
    config = Path(adapter, "adapter_config.json")
    if not config.is_file():
        raise ValueError(f"adapter {adapter}: no adapter_config.json (a PEFT LoRA folder is needed)")
    return int(json.loads(config.read_text())["r"])


@serve.deployment
class TailoredLLMDeployment:
    def __init__(self, model: str, adapters: dict[str, str], engine: dict):
        from vllm import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.async_llm import AsyncLLM

        from persona_ray.engines.vllm_engine import engine_env, engine_kwargs

        settings = EngineSettings(**{**engine, "model": model})
        kwargs = engine_kwargs(settings.vllm)
        for name, value in engine_env(settings.vllm).items():
            os.environ.setdefault(name, value)
        if not settings.vllm.gpu:
            # vLLM's CPU engine dies on a seeded request still in chunked prefill: seed the engine once.
            kwargs.setdefault("seed", settings.sampling.seed or 0)
        if adapters:
            kwargs.update(enable_lora=True, max_loras=len(adapters),
                          max_lora_rank=max(_lora_rank(a) for a in adapters.values()))
        self.loras = {name: LoRARequest(name, number, path)
                      for number, (name, path) in enumerate(sorted(adapters.items()), start=1)}
        self.max_model_len = settings.vllm.max_model_len
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=settings.engine_model(), **kwargs))
        self.tokenizer = self.engine.get_tokenizer()

    def _too_long(self, text: str, max_tokens: int) -> tuple[int, str | None]:
        """(prompt tokens, the reason to refuse or None)."""
        count = len(self.tokenizer(text)["input_ids"])
        if count + max_tokens > self.max_model_len:
            return count, (f"prompt: {count} tokens with the template and persona; with max_tokens {max_tokens} that "
                           f"exceeds the model's context of {self.max_model_len} tokens")
        return count, None

    def _params(self, sampling: dict[str, Any], stream: bool):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(temperature=sampling["temperature"], top_p=sampling["top_p"],
                              max_tokens=sampling["max_tokens"], stop=sampling["stop"] or None,
                              output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY)

    async def generate(self, text: str, sampling: dict[str, Any], served: str) -> dict[str, Any]:
        """{"text", "finish_reason", "prompt_tokens", "completion_tokens"}, or {"refused": reason}."""
        _, refused = self._too_long(text, sampling["max_tokens"])
        if refused:
            return {"refused": refused}
        final = None
        async for output in self.engine.generate(text, self._params(sampling, stream=False), uuid.uuid4().hex,
                                                 lora_request=self.loras.get(served)):
            final = output
        choice = final.outputs[0]
        return {"text": choice.text.strip(), "finish_reason": choice.finish_reason or "stop",
                "prompt_tokens": len(final.prompt_token_ids or []), "completion_tokens": len(choice.token_ids)}

    async def stream(self, text: str, sampling: dict[str, Any], served: str) -> AsyncIterator[dict[str, Any]]:
        """Pieces {"text"} as they come, then {"finish_reason", "prompt_tokens", "completion_tokens"};
        or only {"refused": reason}."""
        prompt_tokens, refused = self._too_long(text, sampling["max_tokens"])
        if refused:
            yield {"refused": refused}
            return
        started, produced, finish = False, 0, "stop"
        async for output in self.engine.generate(text, self._params(sampling, stream=True), uuid.uuid4().hex,
                                                 lora_request=self.loras.get(served)):
            choice = output.outputs[0]
            produced += len(choice.token_ids)
            piece = choice.text if started else choice.text.lstrip()  # the answer follows "Response: "
            if piece:
                started = True
                yield {"text": piece}
            finish = choice.finish_reason or finish
        yield {"finish_reason": finish, "prompt_tokens": prompt_tokens, "completion_tokens": produced}

    async def ready(self) -> bool:
        await self.engine.check_health()
        return True

    async def check_health(self) -> None:
        await self.engine.check_health()  # raises when the engine died: Serve replaces the replica
