"""Typed settings: every job's config is a `Settings` model loaded from YAML, with command-line
overrides on top, and every field is documented once (`Field(description=...)`).

    load_config(InferConfig, "cluster/jobs/local.yaml", {"engine.model": "tiny"})
    describe(InferConfig, "engine.model")      # the field's description: CLI help text
    config_reference([InferConfig, ...])       # Markdown tables: the README's config reference

A nested block given in YAML changes only the keys it names; the others keep the job's own
defaults (a judge's `sampling.max_tokens: 512` survives `engine: {sampling: {temperature: 0.7}}`).
Unknown keys are errors that name the key.
"""

from __future__ import annotations

import types
import typing
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from persona_ray.core.errors import UserError

T = TypeVar("T", bound=BaseModel)


class ConfigError(UserError):
    """A config file or override is wrong; the message names the field."""


def _deep_merge(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class Settings(BaseModel):
    """Base of every config block: unknown keys are refused, job defaults of nested blocks kept."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _keep_nested_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, field in cls.model_fields.items():
            default, given = field.default, data.get(name)
            if isinstance(default, BaseModel) and isinstance(given, dict):
                # Only what the job set on its default block (exclude_unset), under what was given.
                merged[name] = _deep_merge(default.model_dump(exclude_unset=True), given)
        return merged


def set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    """set_dotted(d, "engine.vllm.batch_size", 8) -> d["engine"]["vllm"]["batch_size"] = 8"""
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


# ---------------------------------------------------------------------------------------------
# Documentation from the fields themselves.

def _block_class(annotation: Any) -> type[BaseModel] | None:
    """The Settings class a field holds (also inside `X | None`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _block_class(arg)
            if found:
                return found
    if typing.get_origin(annotation) is list:
        (arg,) = typing.get_args(annotation) or (None,)
        return _block_class(arg)
    return None


def field_info(cls: type[BaseModel], dotted: str) -> FieldInfo:
    """The pydantic field behind a (nested) key, e.g. field_info(InferConfig, "engine.model")."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        block = _block_class(cls.model_fields[part].annotation)
        if block is None:
            raise KeyError(f"{cls.__name__}.{part} is not a settings block")
        cls = block
    return cls.model_fields[leaf]


def describe(cls: type[BaseModel], dotted: str) -> str:
    """The description of a (nested) field: the one text for YAML docs and CLI help."""
    description = field_info(cls, dotted).description
    if not description:
        raise KeyError(f"{cls.__name__}.{dotted} has no description")
    return description


def _summary(cls: type) -> str:
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


def _flat(values: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={value!r}")
    return out


def _table(cls: type[BaseModel], blocks: dict[str, type[BaseModel]]) -> list[str]:
    """One row per field; a settings block is named (and collected into `blocks`), with the
    defaults this class gives it that differ from the block's own."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name, field in cls.model_fields.items():
        block = _block_class(field.annotation)
        meaning = field.description or (_summary(block) if block else "")
        if block is not None:
            blocks.setdefault(block.__name__, block)
            own = field.default.model_dump(exclude_unset=True) if isinstance(field.default, BaseModel) else {}
            default = ("list of " if typing.get_origin(field.annotation) is list else "") + f"`{block.__name__}`"
            default += f": {', '.join(_flat(own))}" if own else ""
            if field.default is PydanticUndefined and field.default_factory is None:
                default += " (required)"
        elif field.default_factory is not None:
            default = f"`{field.default_factory()!r}`"
        elif field.default is PydanticUndefined:
            default = "required"
        else:
            default = f"`{field.default!r}`"
        cells = [f"`{name}`", default, " ".join(meaning.split())]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return rows


def config_reference(classes: list[type[BaseModel]]) -> str:
    """Markdown: a table per job config, then one per settings block they share (each block
    documented once, with its own defaults; a job's table names the defaults it changes)."""
    blocks: dict[str, type[BaseModel]] = {}
    parts: list[str] = []
    for cls in classes:
        parts += [f"#### `{cls.__name__}`", "", _summary(cls), "", *_table(cls, blocks), ""]
    parts += ["#### Settings blocks", ""]
    done: set[str] = set()
    while len(done) < len(blocks):  # blocks may name further blocks
        name = next(n for n in blocks if n not in done)
        done.add(name)
        parts += [f"`{name}`: {_summary(blocks[name])}", "", *_table(blocks[name], blocks), ""]
    return "\n".join(parts)
