"""Preference pairs from any supported input: adapt, validate, and tell good rows from bad.

`read_pairs` opens the input as a streaming Ray Dataset of prepared rows:
    pair fields (schema.PAIR_FIELDS), valid (bool), reason ("" when valid, else the field and
    what is wrong), raw (the input row as written: only when invalid, unless keep_raw), id_key / content_key
    (64-bit hashes of the pair id and of the pair's text: duplicate ids are found from these).
A stage may add its own check (e.g. the PI prompt must fit the model context) as `extra_check`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Literal

import pyarrow as pa
import ray.data
from pydantic import Field

from persona_ray.core.settings import Settings
from persona_ray.inference.adapters import FORMATS, adapt_row
from persona_ray.inference.readers import JSON_LINE, LINE_ERROR, LINE_WHERE, read_input
from persona_ray.core.schema import ContractError, PreferencePair, check_pair, raw_json, row_id

ExtraCheck = Callable[[PreferencePair], "str | None"]  # returns the reason a valid pair is unusable


class PairSource(Settings):
    """Where the preference pairs are and how to read them."""

    input: str = Field(description=".jsonl/.json/.parquet file or folder, local or s3://; a saved Hugging Face "
                       "dataset folder; hf://NAME")
    input_format: Literal[FORMATS] = Field(  # type: ignore[valid-type]
        "auto", description="auto, flat (prompt/chosen/rejected), pku_saferlhf (BeaverTails / PKU-SafeRLHF), "
        "hh_rlhf (Anthropic HH dialogues), shp (Stanford Human Preferences)")
    input_split: str = Field("train", description="the split to read from a Hugging Face DatasetDict")
    source: str = Field("", description="source name for rows that do not carry one")
    domain: str = Field("", description="domain (picks the k-shot exemplars) for rows that do not carry one; "
                        "default: the format's usual domain")


def key64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def in_share(pair_id: str, share: float) -> bool:
    """Whether a pair id falls in the first `share` of ids by hash: the same pairs on every run."""
    return (key64("share\x1f" + pair_id) & 0xFFFFFFFF) < share * 2**32


def _invalid(row_id: str, reason: str, raw: str, pair: PreferencePair | None = None) -> dict[str, Any]:
    fields = pair.as_dict() if pair else {"pair_id": row_id, "prompt": "", "chosen": "", "rejected": "",
                                          "domain": "", "source": ""}
    # A pair that is fine except for a stage check keeps its id key, so later passes can skip it.
    return {**fields, "valid": False, "reason": reason, "raw": raw, "id_key": key64(row_id) if pair else 0,
            "content_key": 0}


def prepare_row(row: dict[str, Any], src: PairSource, extra_check: ExtraCheck | None = None,
                keep_raw: bool = False) -> dict[str, Any]:
    original = row
    # The quarantine keeps the row as the user wrote it: the line itself for JSON Lines input.
    raw = original[JSON_LINE] if JSON_LINE in original else raw_json(original)
    try:
        if JSON_LINE in row:
            where = f" ({row[LINE_WHERE]})" if row.get(LINE_WHERE) else ""  # file:line
            if row.get(LINE_ERROR):
                raise ContractError("<line>", row[LINE_ERROR] + where)
            try:
                row = json.loads(row[JSON_LINE])
            except json.JSONDecodeError as exc:
                raise ContractError("<line>", f"not valid JSON ({exc.msg} at column {exc.colno}){where}") from None
            if not isinstance(row, dict):
                raise ContractError("<line>", f"expected a JSON object, got {type(row).__name__}{where}")
        pair = check_pair(adapt_row(row, src.input_format, src.source, src.domain))
    except ContractError as exc:
        rid = row_id(row) if isinstance(row, dict) else None
        rid = str(rid) if rid else "sha256:" + hashlib.sha256(raw.encode()).hexdigest()[:16]
        return _invalid(rid, str(exc), raw)
    problem = extra_check(pair) if extra_check else None
    if problem:
        return _invalid(pair.pair_id, problem, raw, pair)
    return {**pair.as_dict(), "valid": True, "reason": "", "raw": raw if keep_raw else "", "id_key": key64(pair.pair_id),
            "content_key": key64("\x1f".join((pair.prompt, pair.chosen, pair.rejected)))}


class PreparePairs:
    """Ray Data UDF over pyarrow batches (a class, so a stage check can hold e.g. a tokenizer)."""

    def __init__(self, src: PairSource, extra_check: ExtraCheck | None = None, keep_raw: bool = False):
        self.src, self.extra_check, self.keep_raw = src, extra_check, keep_raw

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([prepare_row(row, self.src, self.extra_check, self.keep_raw)
                                     for row in batch.to_pylist()])


def read_pairs(src: PairSource, extra_check: ExtraCheck | None = None, keep_raw: bool = False) -> ray.data.Dataset:
    """keep_raw: also keep valid rows' text as written (for the few rows a job may yet quarantine)."""
    return read_input(src.input, src.input_split).map_batches(
        PreparePairs, fn_constructor_kwargs={"src": src, "extra_check": extra_check, "keep_raw": keep_raw},
        batch_format="pyarrow", batch_size=256, concurrency=(1, 2),
    )
