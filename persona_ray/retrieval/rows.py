"""The rows an index holds: the training rows, checked, once per id, in id order, written as a stream.

    rows = write_index_rows(cfg, scratch_folder, digest)   # IndexRows: the files and their counts

read (Ray Data; each row named "file:row") -> checked in the workers -> a bad row goes to the
quarantine; of the good rows, the first of each id (split order, then file order) is kept ->
sorted by id (group_in_order) -> the driver streams the kept rows into rows.parquet and hashes
them in that order. Nothing the size of the data is held on the driver. Row i of rows.parquet is
ColBERT passage id i.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data

from persona_ray.core import storage
from persona_ray.core.groups import group_in_order
from persona_ray.core.schema import row_id
from persona_ray.dataset.splits import TEST_SPLIT, split_uri
from persona_ray.inference.readers import JSON_LINE, LINE_ERROR, LINE_WHERE, read_input, where_number

ROW_COLUMNS = ("row_id", "prompt", "chosen_persona", "rejected_persona", "split", "domain")
ROW_SCHEMA = pa.schema([(c, pa.string()) for c in ROW_COLUMNS])
# The checked rows: a bad row has its reason (and only its id, if any); `_order` ranks the rows of
# one id (split position, then row number in the file): the lowest is kept.
CHECKED_SCHEMA = pa.schema([*ROW_SCHEMA, ("_where", pa.string()), ("_order", pa.int64()), ("_reason", pa.string())])
_ROWS_PER_FILE_BITS = 40


def check_row(row: dict) -> tuple[dict | None, str | None]:
    """(index row, None) or (None, reason naming the field)."""
    if "_error" in row:
        return None, row["_error"]
    if row.get("split") == TEST_SPLIT:
        return None, "split: test rows are never indexed"
    rid = row_id(row)
    if not isinstance(rid, str) or not rid.strip():
        return None, "pair_id/id: missing or not a string"
    for field in ("prompt", "chosen_persona", "rejected_persona"):
        value = row.get(field)
        if not isinstance(value, str) or not value.strip():
            return None, f"{field}: missing, empty or not a string"
    domain = row.get("domain")
    return {"row_id": rid, "prompt": row["prompt"].strip(), "chosen_persona": row["chosen_persona"].strip(),
            "rejected_persona": row["rejected_persona"].strip(), "split": str(row["split"]),
            "domain": domain if isinstance(domain, str) and domain else "unknown"}, None


def _parsed(raw: dict) -> dict:
    """A JSON Lines row parsed (or {"_error": why}); a Parquet row as it is."""
    if JSON_LINE not in raw:
        return raw
    if raw.get(LINE_ERROR):
        return {"_error": raw[LINE_ERROR]}
    try:
        row = json.loads(raw[JSON_LINE])
    except json.JSONDecodeError as exc:
        return {"_error": f"not JSON ({exc.msg})"}
    return row if isinstance(row, dict) else {"_error": "not a JSON object"}


def check_batch(batch: pa.Table, split: str | None, rank: int) -> pa.Table:
    """Raw rows (with LINE_WHERE) -> CHECKED_SCHEMA rows. `split`: the split the file is (folder
    input), or None: each row's own `split`, "train" when it has none (file input)."""
    out: list[dict[str, Any]] = []
    for raw in batch.to_pylist():
        where = raw.pop(LINE_WHERE)
        row = _parsed(raw)
        row["split"] = split or row.get("split") or "train"
        checked, reason = check_row(row)
        if checked is None:
            rid = row_id(row)
            checked = {c: None for c in ROW_COLUMNS} | {"row_id": None if rid is None else str(rid)}
        out.append({**checked, "_where": where, "_order": (rank << _ROWS_PER_FILE_BITS) + where_number(where),
                    "_reason": reason or ""})
    return pa.Table.from_pylist(out, schema=CHECKED_SCHEMA)


def located_rows(data: str, splits: list[str]) -> ray.data.Dataset:
    """The raw rows of the configured splits of an augmented folder (or of one file), checked."""
    if not storage.is_dir(data):
        if not storage.exists(data):
            raise FileNotFoundError(f"{data}: no such file or folder")
        return read_input(data, located=True).map_batches(check_batch, fn_args=(None, 0), batch_format="pyarrow")
    parts = []
    for rank, split in enumerate(splits):
        path = split_uri(data, split)
        if not storage.exists(path):
            raise FileNotFoundError(f"{data}: no {split}.parquet (splits to index: {splits})")
        parts.append(read_input(path, located=True).map_batches(check_batch, fn_args=(split, rank),
                                                                 batch_format="pyarrow"))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _bad(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.not_equal(batch["_reason"], ""))


def _good(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.equal(batch["_reason"], ""))


def _first_of_id(group: pa.Table) -> pa.Table:
    """SFT and DPO splits share rows: the row of the first split (then the first in its file)."""
    first = pc.index(group["_order"], pc.min(group["_order"])).as_py()
    return group.slice(first, 1).select(list(ROW_COLUMNS))


@dataclass
class IndexRows:
    rows_path: str         # local Parquet file, ROW_SCHEMA, in id order
    quarantine_path: str   # local JSON Lines: where, row_id, reason
    rows: int
    quarantined: int
    splits: list[str]


def write_index_rows(data: str, splits: list[str], folder: str, digest: Any) -> IndexRows:
    """Stream the index rows of `data` into `folder` (rows.parquet, quarantine.jsonl); each kept row,
    in id order, goes into `digest` (a hashlib object) as one JSON line of ROW_COLUMNS."""
    checked = located_rows(data, splits).materialize()  # two passes below: read and check once
    quarantine_path, quarantined = os.path.join(folder, "quarantine.jsonl"), 0
    with open(quarantine_path, "w", encoding="utf-8") as out:
        for batch in checked.map_batches(_bad, batch_format="pyarrow").iter_batches(batch_format="pyarrow"):
            for row in batch.select(["_where", "row_id", "_reason"]).to_pylist():
                out.write(json.dumps({"where": row["_where"], "row_id": row["row_id"], "reason": row["_reason"]},
                                     ensure_ascii=False) + "\n")
                quarantined += 1
    rows_path, count, seen_splits = os.path.join(folder, "rows.parquet"), 0, set()
    with pq.ParquetWriter(rows_path, ROW_SCHEMA, compression="zstd") as writer:
        good = checked.map_batches(_good, batch_format="pyarrow")
        for batch in group_in_order(good, "row_id", _first_of_id).iter_batches(batch_format="pyarrow"):
            batch = batch.select(list(ROW_COLUMNS)).cast(ROW_SCHEMA)
            for row in batch.to_pylist():
                digest.update(json.dumps([row[c] for c in ROW_COLUMNS]).encode() + b"\n")
                seen_splits.add(row["split"])
            writer.write_table(batch)
            count += batch.num_rows
    return IndexRows(rows_path, quarantine_path, count, quarantined, sorted(seen_splits))
