"""What a client may send, checked before anything reaches a model.

    ChatRequest, CompletionRequest, TailorRequest   the bodies (strict types, unknown fields refused)
    refusal_of(validation errors)                   a RequestError naming the first bad field
    check_prompt(text, cfg)                         the prompt, or RequestError naming the field
    check_persona(text, cfg)                        a given persona through the persona gate PI
                                                    output goes through (the shared rules: protected
                                                    attributes, instructions inside, degenerate
                                                    text, ...; then the embedding check for protected
                                                    attributes said indirectly, ~25 ms on one CPU thread)
    pick_retrieved(hits, side, cfg)                 the first retrieved persona that passes it
    chat_prompt(messages)                           the question of a chat request
    sampling_of(req, cfg)                           the request's sampling within the server's limits

A request is untrusted input: types are strict ("8" and true are not numbers of tokens), text
must be valid Unicode (no lone surrogates), prompts carry no control characters but line
breaks and tabs, and every refusal says which field and why (the ingress turns RequestError
into 422, or 404 for an unknown model).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from persona_ray.core.persona import PersonaError, clean_persona
from persona_ray.core.persona_gate import gate_persona
from persona_ray.serving.config import ServeConfig

# Control characters but tab, line feed and carriage return; NUL included.
_PROMPT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
Number = StrictInt | StrictFloat
MAX_STOPS, MAX_STOP_CHARS = 4, 64
_UNION_TAGS = {"int", "float", "str", "bool", "none"}


class RequestError(ValueError):
    """A request that cannot be served; the message names the field. status: the HTTP status."""

    def __init__(self, message: str, status: int = 422, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class _Generation(_Strict):
    model: StrictStr
    persona: StrictStr | None = Field(None, description="who asks; absent or blank: retrieved from training data")
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: StrictInt | None = Field(None, gt=0)
    temperature: Number | None = Field(None, ge=0, le=2)
    top_p: Number | None = Field(None, gt=0, le=1)
    stop: StrictStr | list[StrictStr] | None = None
    n: StrictInt = Field(1, ge=1, le=1, description="one answer per request")
    user: StrictStr | None = Field(None, max_length=256)


class ChatRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, gt=0)


class CompletionRequest(_Generation):
    prompt: StrictStr


class TailorRequest(_Strict):
    prompt: StrictStr
    persona: StrictStr | None = None
    max_tokens: StrictInt | None = Field(None, gt=0)
    model: StrictStr | None = None


def check_unicode(field: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(f"{field}: not valid Unicode (a lone surrogate code point)", param=field) from None


def check_prompt(text: str, cfg: ServeConfig, field: str = "prompt") -> str:
    check_unicode(field, text)
    prompt = text.strip()
    if not prompt:
        raise RequestError(f"{field}: empty", param=field)
    if len(prompt) > cfg.max_prompt_chars:
        raise RequestError(f"{field}: {len(prompt)} characters; the limit is {cfg.max_prompt_chars}", param=field)
    if _PROMPT_CONTROL.search(prompt):
        raise RequestError(f"{field}: contains control characters", param=field)
    return prompt


def check_persona(text: str | None, cfg: ServeConfig) -> str | None:
    """The cleaned persona, None for absent or blank (retrieve one), or RequestError with the reason."""
    if text is None or not text.strip():
        return None
    check_unicode("persona", text)
    try:
        persona = clean_persona(text, cfg.max_persona_chars)
    except PersonaError as err:
        raise RequestError(str(err), param="persona") from None
    checked = gate_persona(persona)  # the same gate as PI output: the shared rules + the embedding check
    if not checked.valid:
        raise RequestError(f"persona: {checked.reason}", param="persona")
    return checked.persona


def pick_retrieved(hits: list[dict], side: str, cfg: ServeConfig) -> tuple[str | None, dict]:
    """(the first valid persona among the hits, what the answer says of it): a retrieved persona is
    training data written by users or a model, checked like a given one; invalid hits are skipped
    with the reason. {"score", "rank", "skipped": [{"reason"}]}, and the row ids of the persona and
    of the skipped hits with `retrieved_detail: row_id`; never a training prompt (another user's text)."""
    with_ids = cfg.retrieved_detail == "row_id"
    skipped = []
    for rank, hit in enumerate(hits, start=1):
        try:
            persona = check_persona(hit.get(f"{side}_persona") or "", cfg)
            reason = None if persona else "persona: empty"
        except RequestError as err:
            persona, reason = None, str(err)
        if reason is None:
            info = {"score": hit.get("score"), "rank": rank, "skipped": skipped}
            return persona, {"row_id": hit.get("row_id"), **info} if with_ids else info
        skipped.append({"row_id": hit.get("row_id"), "reason": reason} if with_ids else {"reason": reason})
    info = {"score": None, "rank": None, "skipped": skipped}
    return None, {"row_id": None, **info} if with_ids else info


def chat_prompt(messages: list[ChatMessage]) -> str:
    """The one user question of a chat: the tailored models answer a prompt for a persona, so a
    system message (use `persona`) and earlier turns are refused rather than silently dropped."""
    if len(messages) != 1 or messages[0].role != "user":
        roles = [m.role for m in messages]
        raise RequestError(f"messages: send exactly one message with role user (got roles {roles}); the persona "
                           "goes in the `persona` field, earlier turns are not supported", param="messages")
    content = messages[0].content
    if content is None:
        raise RequestError("messages[0].content: empty", param="messages")
    return content if isinstance(content, str) else "\n".join(part.text for part in content)


def sampling_of(req: _Generation, cfg: ServeConfig) -> dict[str, Any]:
    """{"max_tokens", "temperature", "top_p", "stop"} for the engine: the request's values where it
    gave them, else the server's; max_tokens within max_tokens_limit."""
    default = cfg.engine.sampling
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens or default.max_tokens
    if max_tokens > cfg.max_tokens_limit:
        raise RequestError(f"max_tokens: {max_tokens}; the limit is {cfg.max_tokens_limit}", param="max_tokens")
    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    if stop is not None and (len(stop) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS for s in stop)):
        raise RequestError(f"stop: at most {MAX_STOPS} strings of 1 to {MAX_STOP_CHARS} characters", param="stop")
    for text in stop or []:
        check_unicode("stop", text)
    return {"max_tokens": max_tokens,
            "temperature": default.temperature if req.temperature is None else float(req.temperature),
            "top_p": default.top_p if req.top_p is None else float(req.top_p),
            "stop": default.stop if stop is None else stop}


def refusal_of(errors: list[dict]) -> RequestError:
    """Validation errors as a 422 whose message says each field and reason and whose `param` (the
    OpenAI error field) is the path of the first: `max_tokens`, `messages`, `messages.0.role`, an
    unknown field's own name."""
    return RequestError(describe_validation(errors), param=_field_path(errors[0].get("loc", ())) if errors else None)


def _field_path(location: tuple) -> str | None:
    """A pydantic error location as the request's field path: list indexes kept; FastAPI's "body"
    and the member tags pydantic adds inside a union ("int", "list[TextPart]", "TextPart") left out."""
    parts = [str(x) for x in location
             if isinstance(x, int) or (re.fullmatch(r"[a-z_][a-z0-9_]*", str(x)) and x not in _UNION_TAGS)]
    return ".".join(parts) or None


def describe_validation(errors: list[dict]) -> str:
    """FastAPI/pydantic validation errors as one line a client can act on: 'field: reason; ...'."""
    parts = []
    for error in errors[:5]:
        if error.get("type") == "json_invalid":
            parts.append(f"body: not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})")
            continue
        parts.append(f"{_field_path(error.get('loc', ())) or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
