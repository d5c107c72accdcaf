"""OpenAI API response shapes (chat completions, completions, their stream chunks, errors, model
list), with the persona the answer was tailored to as extra fields that OpenAI clients keep
(`completion.persona`, `completion.persona_source`, `completion.retrieved`)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(kind: str, request_id: str, model: str, answer: dict, persona: dict) -> dict[str, Any]:
    """A whole answer. `answer`: {"text", "finish_reason", "prompt_tokens", "completion_tokens"};
    `persona`: {"persona", "persona_source", "retrieved"}."""
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": answer["text"]},
                  "finish_reason": answer["finish_reason"], "logprobs": None}
    else:
        choice = {"index": 0, "text": answer["text"], "finish_reason": answer["finish_reason"], "logprobs": None}
    return {"id": request_id, "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice],
            "usage": usage(answer["prompt_tokens"], answer["completion_tokens"]), **persona}


def chunk(kind: str, request_id: str, model: str, text: str | None = None, finish_reason: str | None = None,
          first: bool = False, extra: dict | None = None, usage_of: dict | None = None) -> dict[str, Any]:
    """One streamed piece: the first carries the role (chat) and the persona fields; the last
    the finish reason; with stream_options.include_usage a final one carries usage and no choice."""
    if usage_of is not None:
        choices = []
    elif kind == "chat":
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        choices = [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
    else:
        choices = [{"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}]
    body = {"id": request_id, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "choices": choices, **(extra or {})}
    if usage_of is not None:
        body["usage"] = usage_of
    return body


def sse(data: dict | str) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def error(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def model_list(models: list[dict]) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": m["name"], "object": "model", "created": 0, "owned_by": "persona-ray",
                                        "mode": m["mode"]} for m in models]}
