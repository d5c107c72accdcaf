"""Checks a batch job runs before it starts Ray or any engine, so a mistake costs seconds.

Each check raises UserError naming the config field, what is wrong and the fix:
    check_input(field, uri)          the input exists (a file, a folder, an s3:// object or prefix)
    check_output(field, uri)         the output is (or can become) a folder we can write: a probe
                                     file is written and removed, on S3 too
    check_model(field, name)         a model name resolves to a folder transformers can read
    check_endpoint(field, ...)       an OpenAI-compatible endpoint answers GET /models in seconds
    check_engine(field, settings)    check_model or check_endpoint, by the engine's backend
"""

from __future__ import annotations

import os
import uuid

from persona_ray.core import storage
from persona_ray.core.errors import UserError, one_line

PROBE_PREFIX = "_persona-ray-probe-"


def check_input(field: str, uri: str) -> None:
    if uri.startswith("hf://"):
        return  # a hub dataset: only the hub can say
    try:
        found = storage.exists(uri)
    except OSError as exc:
        raise UserError(f"{field}: cannot read {uri} ({one_line(exc, 200)}). Fix: check the path, "
                        "the S3 endpoint (AWS_ENDPOINT_URL) and credentials") from None
    if not found:
        raise UserError(f"{field}: {uri} does not exist. Fix: point {field} at a .jsonl/.json/.parquet "
                        "file or a folder of them")


def check_output(field: str, uri: str) -> None:
    """The output folder exists or can be made, and a file written there can be removed again."""
    if not storage.is_s3(uri):
        path = os.path.abspath(uri)
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError(f"{field}: {path} is a file, not a folder. Fix: choose another {field}")
        parent = path
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise UserError(f"{field}: {parent} is a file, so {path} cannot be made. Fix: choose another {field}")
    probe = storage.join(uri, f"{PROBE_PREFIX}{uuid.uuid4().hex[:8]}")
    try:
        storage.write_bytes(probe, b"", retry_s=0)
        storage.delete(probe)
    except (OSError, UserError) as exc:
        raise UserError(f"{field}: cannot write to {uri} ({one_line(exc, 200)}). Fix: check permissions, "
                        "the S3 endpoint (AWS_ENDPOINT_URL), bucket and credentials") from None


def check_model(field: str, name: str) -> str:
    """The model's local folder (building a named one first); UserError when it cannot be loaded."""
    from persona_ray.core.models import resolve_model

    try:
        path = resolve_model(name)
    except (OSError, ValueError) as exc:
        raise UserError(f"{field}: cannot build model '{name}' ({one_line(exc, 200)})") from None
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            raise UserError(f"{field}: {path} has no config.json. Fix: point {field} at a Hugging Face model "
                            "folder, or use 'tiny' / 'smollm2'")
    elif path.startswith(("/", "./", "../", "~")):
        raise UserError(f"{field}: {path} does not exist. Fix: point {field} at a model folder")
    return path


def check_endpoint(field: str, openai, timeout_s: float = 5.0) -> None:
    """GET <base_url>/models of an OpenAISettings: reachable, and our key (if any) accepted."""
    import httpx

    url = openai.base_url.rstrip("/") + "/models"
    try:
        response = httpx.get(url, headers=openai.auth_headers(), timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise UserError(f"{field}: cannot reach {url} ({type(exc).__name__}: {one_line(exc, 160) or 'no answer'}). "
                        "Fix: start the server or correct the URL") from None
    if response.status_code in (401, 403):
        raise UserError(f"{field}: {url} answered {response.status_code}. Fix: check the API key in ${openai.api_key_env}")
    if response.status_code >= 500:
        raise UserError(f"{field}: {url} answered {response.status_code}: the server is unwell. Fix: check its logs")


def check_engine(field: str, engine) -> str:
    """An EngineSettings at config key `field`: the vLLM model loads, or the endpoint answers.
    Returns the model's local path (vLLM) or served name (openai)."""
    if engine.backend == "openai":
        check_endpoint(f"{field}.openai.base_url", engine.openai)
        return engine.model
    return check_model(f"{field}.model", engine.model)
