"""Typed job configs loaded from YAML, with command-line overrides on top."""

from __future__ import annotations

from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the field."""


def set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    """set_dotted(d, "vllm.batch_size", 8) -> d["vllm"]["batch_size"] = 8"""
    *parents, leaf = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value


def load_config(cls: type[T], path: str | None = None, overrides: dict[str, Any] | None = None) -> T:
    data: dict[str, Any] = {}
    if path:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, dotted, value)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<config>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path or 'config'}: {problems}") from None
