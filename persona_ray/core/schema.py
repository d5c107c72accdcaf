"""Data contracts shared by every pipeline stage.

Preference pair (one row of input after adaptation)
    pair_id   str  unique id; the source's own id when it has one, else a content hash
    prompt    str  the user's request (for dialogues: every turn before the compared reply)
    chosen    str  the response the annotator preferred
    rejected  str  the other response
    domain    str  selects the k-shot exemplars (safety_qa | dialogue | reddit | mnemonic | ...)
    source    str  where the row came from (dataset name)

Persona record (one row of persona-inference output; two per pair)
    pair_id           str   the pair it explains
    side              str   "chosen" or "rejected": whose response the persona prefers
    persona           str   the parsed one-sentence persona ("" when invalid)
    raw_text          str   exactly what the model wrote
    model             str   model name or path
    template_version  str   version of the PI prompt template
    valid             bool  persona parsed and passed the content checks
    reason            str   why it is invalid ("" when valid)
    copied_exemplar   bool  the valid persona is a near copy of an exemplar persona its PI prompt
                            showed (core/persona.near_copy); a copy stays valid (null in records
                            written before the field existed)
    num_input_tokens  int   prompt tokens (0 when the engine does not report it)
    num_output_tokens int   generated tokens

Quarantine record (an input row that broke the pair contract)
    row_id  str  the pair id when one could be made, else "<file/offset or hash>"
    reason  str  what is wrong, naming the field
    raw     str  the input row as JSON, so nothing is lost
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

SIDES = ("chosen", "rejected")
PAIR_FIELDS = ("pair_id", "prompt", "chosen", "rejected", "domain", "source")
TEXT_FIELDS = ("prompt", "chosen", "rejected")

PAIR_SCHEMA = pa.schema([(name, pa.string()) for name in PAIR_FIELDS])

PERSONA_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("side", pa.string()),
        ("persona", pa.string()),
        ("raw_text", pa.string()),
        ("model", pa.string()),
        ("template_version", pa.string()),
        ("valid", pa.bool_()),
        ("reason", pa.string()),
        ("copied_exemplar", pa.bool_()),
        ("num_input_tokens", pa.int64()),
        ("num_output_tokens", pa.int64()),
    ]
)


def given_persona_record(pair_id: str, side: str, persona: str, source: str) -> dict:
    """A PERSONA_SCHEMA record for a persona that no PI model wrote (a world's gold persona taught
    to a PI student): valid by the shared rules, `source` in the model field."""
    from persona_ray.core.persona import validate_persona

    checked = validate_persona(persona)
    return {"pair_id": pair_id, "side": side, "persona": checked.persona if checked.valid else persona,
            "raw_text": persona, "model": source, "template_version": "given", "valid": checked.valid,
            "reason": checked.reason or "", "copied_exemplar": False, "num_input_tokens": 0, "num_output_tokens": 0}


QUARANTINE_SCHEMA = pa.schema([("row_id", pa.string()), ("reason", pa.string()), ("raw", pa.string())])


@dataclass(frozen=True)
class PreferencePair:
    pair_id: str
    prompt: str
    chosen: str
    rejected: str
    domain: str
    source: str

    def as_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in PAIR_FIELDS}


class ContractError(ValueError):
    """A row breaks the pair contract. The message names the field and the reason."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"field '{field}': {reason}")
        self.field = field
        self.reason = reason


def content_id(source: str, prompt: str, chosen: str, rejected: str) -> str:
    """Stable id for rows whose source has none: identical pairs share it."""
    digest = hashlib.sha256("\x1f".join((source, prompt, chosen, rejected)).encode()).hexdigest()
    return f"{source}-{digest[:16]}"


def text_field(row: dict[str, Any], name: str) -> str:
    """row[name] as text, or ContractError naming the field ("missing" / "expected text")."""
    value = row.get(name)
    if value is None:
        raise ContractError(name, "missing")
    if not isinstance(value, str):
        raise ContractError(name, f"expected text, got {type(value).__name__}")
    return value


# C0 control characters other than tab, newline and carriage return, and DEL: no prompt or
# response needs them, and NUL in particular breaks C tokenizers and terminals downstream.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_pair(row: dict[str, Any]) -> PreferencePair:
    """Validate one adapted row against the contract; raise ContractError naming the field."""
    for name in (*TEXT_FIELDS, "pair_id", "domain", "source"):
        value = text_field(row, name)
        if name in TEXT_FIELDS and not value.strip():
            raise ContractError(name, "empty")
        control = _CONTROL.search(value)
        if control:
            raise ContractError(name, f"control character U+{ord(control.group()):04X} at position {control.start()}")
    if not row["pair_id"].strip():
        raise ContractError("pair_id", "empty")
    if row["chosen"].strip() == row["rejected"].strip():
        raise ContractError("rejected", "identical to chosen")
    return PreferencePair(**{name: row[name] for name in PAIR_FIELDS})


def row_id(row: dict[str, Any]) -> Any:
    """A row's id: `pair_id`, or `id` in files that call it so (None when it has neither)."""
    return row.get("pair_id", row.get("id"))


def raw_json(row: dict[str, Any]) -> str:
    """The input row as JSON for the quarantine file (non-JSON values as their repr)."""
    return json.dumps(row, ensure_ascii=False, default=repr, sort_keys=True)
