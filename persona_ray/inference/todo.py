"""What persona inference still has to do: each pair id's input rows meet the persona records
already written for it, and one decision comes out per row.

    input rows + written (pair_id, side) keys  --group by pair id-->  todo rows + quarantine rows

A "todo" row is a valid pair with the sides that have no persona yet ("" when both are written:
it still counts as a valid pair). A "left" row is a valid pair this run leaves to another one: out
of the run's `share` of the pairs (a teacher that labels some pairs for a PI student), or with
both sides written by another run ("elsewhere": the student skips its teacher's pairs). A
"quarantine" row is an input row that broke the contract, or a second row with a pair id already
used (the row with the smallest content hash is kept, so the choice never depends on input order).

At scale this is one Ray Data shuffle (`todo_dataset`): nothing proportional to the input is
held on the driver, and a resumed run never ships the set of written keys to every worker.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from persona_ray.core.groups import group_in_order
from persona_ray.core.schema import SIDES
from persona_ray.core.shards import shards_dataset
from persona_ray.inference.input_pairs import in_share

# One dataset for input rows ("pair" or "bad") and written persona keys ("done").
GROUP_SCHEMA = pa.schema([("pair_id", pa.string()), ("kind", pa.string()), ("prompt", pa.string()),
                          ("chosen", pa.string()), ("rejected", pa.string()), ("domain", pa.string()),
                          ("content_key", pa.int64()), ("reason", pa.string()), ("raw", pa.string()),
                          ("side", pa.string())])
TODO_SCHEMA = pa.schema([("kind", pa.string()), ("pair_id", pa.string()), ("prompt", pa.string()),
                         ("chosen", pa.string()), ("rejected", pa.string()), ("domain", pa.string()),
                         ("sides", pa.string()), ("reason", pa.string()), ("raw", pa.string())])


def plan_group(rows: list[dict], share: float | None = None) -> list[dict]:
    """All GROUP_SCHEMA rows of one pair id -> TODO_SCHEMA rows. `share`: only pairs whose id falls
    in that share (input_pairs.in_share) are this run's."""
    pair_id = rows[0]["pair_id"]
    out = [_quarantine(pair_id, r["reason"], r["raw"]) for r in rows if r["kind"] == "bad"]
    pairs = sorted((r for r in rows if r["kind"] == "pair"), key=lambda r: r["content_key"])
    if not pairs:
        return out  # written personas of a pair no longer in the input are left as they are
    kept = pairs[0]
    for other in pairs[1:]:
        reason = (f"field 'pair_id': exact duplicate of pair '{pair_id}'" if other["content_key"] == kept["content_key"]
                  else f"field 'pair_id': '{pair_id}' used by rows with different content (kept one)")
        out.append(_quarantine(pair_id, reason, other["raw"]))
    elsewhere = {r["side"] for r in rows if r["kind"] == "elsewhere"}
    if (share is not None and not in_share(pair_id, share)) or elsewhere >= set(SIDES):
        return out + [{"kind": "left", "pair_id": pair_id}]
    written = {r["side"] for r in rows if r["kind"] == "done"} | elsewhere
    todo = ",".join(side for side in SIDES if side not in written)
    return out + [{"kind": "todo", "pair_id": pair_id, "prompt": kept["prompt"], "chosen": kept["chosen"],
                   "rejected": kept["rejected"], "domain": kept["domain"], "sides": todo, "reason": None,
                   "raw": None}]


def _quarantine(pair_id: str, reason: str, raw: str) -> dict:
    return {"kind": "quarantine", "pair_id": pair_id, "reason": reason, "raw": raw}


# --- Ray Data plumbing -------------------------------------------------------------------------

def _input_rows(batch: pa.Table) -> pa.Table:
    """read_pairs rows (keep_raw) -> GROUP_SCHEMA rows."""
    return pa.table({"pair_id": batch["pair_id"], "kind": pc.if_else(batch["valid"], "pair", "bad"),
                     **{f: batch[f] for f in ("prompt", "chosen", "rejected", "domain", "content_key", "reason",
                                              "raw")},
                     "side": pa.nulls(batch.num_rows, pa.string())}, schema=GROUP_SCHEMA)


def _written_rows(batch: pa.Table, kind: str) -> pa.Table:
    n = batch.num_rows
    empty = pa.nulls(n, pa.string())
    return pa.table({"pair_id": batch["pair_id"], "kind": pa.array([kind] * n), "prompt": empty, "chosen": empty,
                     "rejected": empty, "domain": empty, "content_key": pa.nulls(n, pa.int64()), "reason": empty,
                     "raw": empty, "side": batch["side"]}, schema=GROUP_SCHEMA)


def _plan_group(group: pa.Table, share: float | None) -> pa.Table:
    return pa.Table.from_pylist(plan_group(group.to_pylist(), share), schema=TODO_SCHEMA)


def todo_dataset(pairs: ray.data.Dataset, personas_folder: str, elsewhere: str | None = None,
                 share: float | None = None) -> ray.data.Dataset:
    """`pairs`: read_pairs(..., keep_raw=True); `elsewhere`: another run's personas folder. Returns
    TODO_SCHEMA rows in pair id order."""
    rows = pairs.map_batches(_input_rows, batch_format="pyarrow")
    for folder, kind in ((personas_folder, "done"), (elsewhere, "elsewhere")):
        written = shards_dataset(folder, ["pair_id", "side"]) if folder else None
        if written is not None:
            rows = rows.union(written.map_batches(_written_rows, fn_args=(kind,), batch_format="pyarrow"))
    return group_in_order(rows, "pair_id", _plan_group, fn_args=(share,))


def of_kind(batch: pa.Table, kind: str) -> pa.Table:
    return batch.filter(pc.equal(batch["kind"], kind))
