"""Augmentation: join persona records to their pairs and cut deterministic splits.

Output rows (one per pair whose two personas are both valid, by PI's flag and by the shared
persona rules of persona_ray.core.persona, which run again here):
    pair_id, prompt, chosen, rejected, domain, source, chosen_persona, rejected_persona, split

Splits (persona_ray.dataset.splits) come from a hash of the normalised prompt text, not of the
pair id: datasets such as SHP or HH-RLHF hold several pairs for one prompt, and a prompt must
never be both in `test` and in a training split. The same input always gives byte-identical files.

Written to the output folder (local or s3://): <split>.parquet and <split>.jsonl, a Hugging
Face DatasetDict in hf/ (load_from_disk), augment_manifest.json with counts, and side files
listing what could not be used: invalid_personas.jsonl, orphan_personas.jsonl (persona
records whose pair is unknown) and pairs_without_personas.jsonl.

How it scales: pairs and persona records go through Ray Data as one dataset grouped by pair id
(a sort-based shuffle, so each pair meets its personas in a worker and the groups come back in
pair id order). The driver holds one batch at a time: it streams the joined rows into the split
files. Exact split sizes need one more pass over the distinct prompts (sorted by Ray Data too),
of which the driver reads only the first test + few-shot ones.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data
from pydantic import Field

from persona_ray.core import storage
from persona_ray.core.persona import validate_persona
from persona_ray.core.settings import Settings
from persona_ray.core.groups import few_blocks, group_in_order
from persona_ray.core.shards import personas_folder, shards_dataset
from persona_ray.dataset.splits import (SPLITS, ExactBounds, SplitSettings, assign_split, exact_bounds,
                                        prompt_key, prompt_rank)
from persona_ray.inference.input_pairs import PairSource, read_pairs

log = logging.getLogger(__name__)
ROW_FIELDS = ("pair_id", "prompt", "chosen", "rejected", "domain", "source", "chosen_persona", "rejected_persona")
ROW_SCHEMA = pa.schema([(name, pa.string()) for name in ROW_FIELDS])
SIDE_FILES = ("invalid_personas", "pairs_without_personas", "orphan_personas")
ROW_GROUP = 2_000  # rows per Parquet row group: fixed, so the bytes do not depend on batch sizes

# One dataset for both inputs: a pair row (kind "pair"), an input row that broke the contract
# ("bad_input") or a persona record ("persona"); the columns the other kind lacks are empty.
GROUP_SCHEMA = pa.schema([("pair_id", pa.string()), ("kind", pa.string()), ("prompt", pa.string()),
                          ("chosen", pa.string()), ("rejected", pa.string()), ("domain", pa.string()),
                          ("source", pa.string()), ("content_key", pa.int64()), ("side", pa.string()),
                          ("persona", pa.string()), ("valid", pa.bool_()), ("reason", pa.string())])
# One row per pair id out of the join: an augmented row (status "ok") or what went wrong.
JOINED_SCHEMA = pa.schema([*ROW_SCHEMA, ("status", pa.string()), ("detail", pa.string()),
                           ("prompt_key", pa.string()), ("rank", pa.float64())])


class AugmentConfig(Settings):
    """Join personas to their pairs and write deterministic splits (Parquet, JSONL, HF DatasetDict)."""

    pairs: PairSource
    personas: str | list[str] = Field(description="a persona-inference output folder (holding personas/) or a "
                                      "personas/ folder; or a list of them (a PI student's teacher and the student)")
    output: str = Field(description="folder or s3:// prefix for the splits and side files")
    splits: SplitSettings = SplitSettings()
    formats: list[Literal["parquet", "jsonl", "hf"]] = Field(
        default_factory=lambda: ["parquet", "jsonl", "hf"], description="file formats to write")
    push_to_hub: str | None = Field(None, description="also push the DatasetDict to this hub repo (needs $HF_TOKEN)")


# --- the join of one pair id's rows (no Ray here) ---------------------------------------------

def join_group(rows: list[dict], splits: SplitSettings) -> list[dict]:
    """All rows of one pair id (GROUP_SCHEMA) -> JOINED_SCHEMA rows: the augmented row, or why
    there is none; and one "bad_input" row per input row that broke the contract."""
    pair_id = rows[0]["pair_id"]
    out = [_status(pair_id, "bad_input") for r in rows if r["kind"] == "bad_input"]
    pairs = sorted((r for r in rows if r["kind"] == "pair"), key=lambda r: r["content_key"])
    personas: dict[str, dict] = {}
    for record in sorted((r for r in rows if r["kind"] == "persona"), key=lambda r: (r["persona"], r["reason"])):
        personas.setdefault(record["side"], record)  # PI writes each side once; another tool may not
    if not pairs:
        return out + ([_status(pair_id, "orphan_personas", {"pair_id": pair_id})] if personas else [])
    # Rows sharing an id: one is kept (smallest content hash, as persona inference keeps).
    out += [_status(pair_id, "duplicate_pair_id") for _ in pairs[1:]]
    pair = pairs[0]
    chosen, rejected = personas.get("chosen"), personas.get("rejected")
    if chosen is None or rejected is None:
        missing = [s for s, r in (("chosen", chosen), ("rejected", rejected)) if r is None]
        return out + [_status(pair_id, "pairs_without_personas", {"pair_id": pair_id, "missing": missing})]
    # PI marks its own personas; the shared rules run again here, since persona records may come
    # from another tool or from a PI run under older rules.
    checked = {side: validate_persona(r["persona"]) if r["valid"] else None
               for side, r in (("chosen", chosen), ("rejected", rejected))}
    if not all(c is not None and c.valid for c in checked.values()):
        reasons = {f"{side}_reason": (r["reason"] if checked[side] is None else checked[side].reason)
                   for side, r in (("chosen", chosen), ("rejected", rejected))}
        return out + [_status(pair_id, "invalid_personas", {"pair_id": pair_id, **reasons})]
    key = prompt_key(pair["prompt"])
    return out + [{**{k: pair[k] for k in ROW_FIELDS[:6]}, "chosen_persona": checked["chosen"].persona,
                   "rejected_persona": checked["rejected"].persona, "status": "ok", "detail": None,
                   "prompt_key": key, "rank": prompt_rank(key, splits)}]


def _status(pair_id: str, status: str, detail: dict | None = None) -> dict:
    return {"pair_id": pair_id, "status": status, "detail": json.dumps(detail) if detail else None}


# --- Ray Data: the inputs as one dataset, grouped by pair id -----------------------------------

def _pair_rows(batch: pa.Table) -> pa.Table:
    """read_pairs rows -> GROUP_SCHEMA rows ("pair", or "bad_input" for rows that broke the contract)."""
    n = batch.num_rows
    kind = pc.if_else(batch["valid"], "pair", "bad_input")
    return pa.table({"pair_id": pc.fill_null(batch["pair_id"], ""), "kind": kind,
                     **{f: batch[f] for f in ("prompt", "chosen", "rejected", "domain", "source", "content_key")},
                     "side": pa.nulls(n, pa.string()), "persona": pa.nulls(n, pa.string()),
                     "valid": batch["valid"], "reason": batch["reason"]}, schema=GROUP_SCHEMA)


def _persona_rows(batch: pa.Table) -> pa.Table:
    n = batch.num_rows
    empty = pa.nulls(n, pa.string())
    return pa.table({"pair_id": batch["pair_id"], "kind": pa.array(["persona"] * n), "prompt": empty,
                     "chosen": empty, "rejected": empty, "domain": empty, "source": empty,
                     "content_key": pa.nulls(n, pa.int64()), "side": batch["side"],
                     "persona": pc.fill_null(batch["persona"], ""), "valid": batch["valid"],
                     "reason": pc.fill_null(batch["reason"], "")}, schema=GROUP_SCHEMA)


def _join_group(group: pa.Table, splits: SplitSettings) -> pa.Table:
    return pa.Table.from_pylist(join_group(group.to_pylist(), splits), schema=JOINED_SCHEMA)


def _with_split(batch: pa.Table, splits: SplitSettings, bounds: ExactBounds | None) -> pa.Table:
    names = [assign_split(p, splits, bounds) if s == "ok" else None
             for p, s in zip(batch["prompt"].to_pylist(), batch["status"].to_pylist())]
    return batch.append_column("split", pa.array(names, pa.string()))


def persona_folders(cfg: AugmentConfig) -> list[str]:
    return [cfg.personas] if isinstance(cfg.personas, str) else list(cfg.personas)


def joined_dataset(cfg: AugmentConfig) -> ray.data.Dataset:
    """JOINED_SCHEMA rows, one or more per pair id, in pair id order."""
    both = read_pairs(cfg.pairs).map_batches(_pair_rows, batch_format="pyarrow")
    for folder in persona_folders(cfg):
        personas = shards_dataset(personas_folder(folder), ["pair_id", "side", "persona", "valid", "reason"])
        if personas is None:
            raise FileNotFoundError(f"{folder}: no persona shards found (run `persona-ray infer` first)")
        both = both.union(personas.map_batches(_persona_rows, batch_format="pyarrow"))
    return group_in_order(both, "pair_id", _join_group, fn_args=(cfg.splits,))


def _augmented_only(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.equal(batch["status"], "ok"))


def _exact_bounds(joined: ray.data.Dataset, splits: SplitSettings) -> ExactBounds:
    """The exact-size cut points over the distinct prompts of the augmented rows."""
    augmented = joined.map_batches(_augmented_only, batch_format="pyarrow").select_columns(["prompt_key", "rank"])
    prompts = few_blocks(few_blocks(augmented).groupby("prompt_key").min("rank").rename_columns({"min(rank)": "rank"}))
    ranked = (
        (row["rank"], row["prompt_key"])
        for batch in prompts.sort(["rank", "prompt_key"]).iter_batches(batch_format="pyarrow", batch_size=4096)
        for row in batch.select(["rank", "prompt_key"]).to_pylist()
    )
    return exact_bounds(ranked, prompts.count(), splits)


# --- the driver: stream the joined rows into files ---------------------------------------------

class _SplitFiles:
    """Per split a Parquet and a JSONL file under a local folder, written as rows arrive
    (row groups of a fixed size); the side files as JSONL."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.parquet = {name: pq.ParquetWriter(folder / f"{name}.parquet", ROW_SCHEMA, compression="zstd")
                        for name in SPLITS}
        self.pending: dict[str, list[dict]] = {name: [] for name in SPLITS}
        self.jsonl = {name: (folder / f"{name}.jsonl").open("w", encoding="utf-8") for name in (*SPLITS, *SIDE_FILES)}
        self.rows: Counter[str] = Counter()

    def add(self, name: str, row: dict) -> None:
        self.rows[name] += 1
        self.jsonl[name].write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        if name in self.pending:
            self.pending[name].append(row)
            if len(self.pending[name]) == ROW_GROUP:
                self._write_group(name)

    def _write_group(self, name: str) -> None:
        self.parquet[name].write_table(pa.Table.from_pylist(self.pending[name], schema=ROW_SCHEMA))
        self.pending[name] = []

    def close(self) -> None:
        for name in SPLITS:
            if self.pending[name] or not self.rows[name]:
                self._write_group(name)  # an empty split still gets a readable (empty) file
            self.parquet[name].close()
        for handle in self.jsonl.values():
            handle.close()


def _write_joined(joined: ray.data.Dataset, files: _SplitFiles, shared_pool: bool) -> Counter[str]:
    """Route each joined row to its split file or side file; returns counts by status."""
    statuses: Counter[str] = Counter()
    previous = ""
    for batch in joined.iter_batches(batch_format="pyarrow", batch_size=4096):
        for row in batch.to_pylist():
            if row["pair_id"] < previous:  # the sort-based shuffle keeps id order; the bytes depend on it
                raise RuntimeError(f"augment: rows came out of pair id order ({row['pair_id']!r} after {previous!r})")
            previous = row["pair_id"]
            statuses[row["status"]] += 1
            if row["status"] == "ok":
                out = {k: row[k] for k in ROW_FIELDS}
                files.add(row["split"], out)
                if shared_pool and row["split"].startswith("sft_"):
                    files.add(row["split"].replace("sft_", "dpo_"), out)
            elif row["status"] in SIDE_FILES:
                files.add(row["status"], json.loads(row["detail"]))
    return statuses


def _write_hf(folder: Path, target: Path) -> None:
    """The DatasetDict built from the split Parquet files (Arrow on disk: never all in memory)."""
    import datasets

    features = datasets.Features({name: datasets.Value("string") for name in ROW_FIELDS})
    cache = folder / "hf-cache"
    dataset = datasets.DatasetDict({
        name: datasets.Dataset.from_parquet(str(folder / f"{name}.parquet"), features=features,
                                            cache_dir=str(cache), keep_in_memory=False)
        for name in SPLITS})
    dataset.save_to_disk(str(target))


def _publish(scratch: Path, cfg: AugmentConfig) -> None:
    """Copy the files asked for from the scratch folder to the output (local or s3://)."""
    names = [f"{n}.parquet" for n in SPLITS if "parquet" in cfg.formats]
    names += [f"{n}.jsonl" for n in SPLITS if "jsonl" in cfg.formats]
    names += [f"{n}.jsonl" for n in SIDE_FILES]
    for name in names:
        storage.upload_file(str(scratch / name), storage.join(cfg.output, name))
    if "hf" in cfg.formats:
        storage.copy_dir(str(scratch / "hf"), storage.join(cfg.output, "hf"))


def run_augment(cfg: AugmentConfig) -> dict[str, Any]:
    """Join, split and write; returns the manifest."""
    from persona_ray.core import preflight
    from persona_ray.core.ray_runtime import ensure_ray

    preflight.check_input("pairs.input", cfg.pairs.input)
    for folder in persona_folders(cfg):
        preflight.check_input("personas", folder)
    preflight.check_output("output", cfg.output)
    ensure_ray()
    joined = joined_dataset(cfg)
    bounds = None
    if cfg.splits.exact:  # two passes over the join: kept in the object store (spilled to disk if large)
        joined = joined.materialize()
        bounds = _exact_bounds(joined, cfg.splits)
    with_split = joined.map_batches(_with_split, fn_args=(cfg.splits, bounds), batch_format="pyarrow")
    with tempfile.TemporaryDirectory(prefix="persona-augment-") as tmp:
        scratch = Path(tmp)
        files = _SplitFiles(scratch)
        statuses = _write_joined(with_split, files, cfg.splits.share_train_pool)
        files.close()
        if "hf" in cfg.formats or cfg.push_to_hub:
            _write_hf(scratch, scratch / "hf")
        _publish(scratch, cfg)
        if cfg.push_to_hub:
            _push(scratch / "hf", cfg.push_to_hub)

    pairs_read = sum(statuses[s] for s in ("ok", "bad_input", "duplicate_pair_id", "invalid_personas",
                                           "pairs_without_personas"))
    manifest = {
        "pairs": cfg.pairs.input, "personas": cfg.personas, "output": cfg.output,
        "counts": {
            "pairs_read": pairs_read, "pairs_invalid_input": statuses["bad_input"],
            "duplicate_pair_ids": statuses["duplicate_pair_id"],
            "augmented_pairs": statuses["ok"], "excluded_invalid_persona": statuses["invalid_personas"],
            "pairs_without_personas": statuses["pairs_without_personas"],
            "orphan_persona_pairs": statuses["orphan_personas"],
            "splits": {name: files.rows[name] for name in SPLITS},
        },
        "splits": cfg.splits.model_dump(),
    }
    storage.write_json(manifest, storage.join(cfg.output, "augment_manifest.json"))
    counts = manifest["counts"]
    log.info("augment: %d pairs in splits %s; excluded %d with invalid personas, %d without personas, "
             "%d orphan persona pairs", counts["augmented_pairs"], counts["splits"],
             counts["excluded_invalid_persona"], counts["pairs_without_personas"], counts["orphan_persona_pairs"],
             extra={"stage": "augment", "rows": counts["augmented_pairs"], "splits": counts["splits"],
                    "invalid_personas": counts["excluded_invalid_persona"],
                    "pairs_without_personas": counts["pairs_without_personas"],
                    "orphan_personas": counts["orphan_persona_pairs"]})
    return manifest


def _push(saved: Path, repo_id: str) -> None:
    import datasets

    if not os.environ.get("HF_TOKEN"):
        raise PermissionError("push_to_hub needs a Hugging Face token in $HF_TOKEN")
    datasets.load_from_disk(str(saved)).push_to_hub(repo_id, token=os.environ["HF_TOKEN"], private=True)
