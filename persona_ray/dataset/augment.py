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
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from persona_ray.core import storage
from persona_ray.core.persona import validate_persona
from persona_ray.core.settings import Settings
from persona_ray.inference.input_pairs import PairSource, read_pairs
from persona_ray.core.shards import read_shards
from persona_ray.dataset.splits import SplitSettings, split_rows

log = logging.getLogger(__name__)
ROW_FIELDS = ("pair_id", "prompt", "chosen", "rejected", "domain", "source", "chosen_persona", "rejected_persona")


class AugmentConfig(Settings):
    """Join personas to their pairs and write deterministic splits (Parquet, JSONL, HF DatasetDict)."""

    pairs: PairSource
    personas: str = Field(description="a persona-inference output folder (holding personas/) or a personas/ folder")
    output: str = Field(description="folder or s3:// prefix for the splits and side files")
    splits: SplitSettings = SplitSettings()
    formats: list[Literal["parquet", "jsonl", "hf"]] = Field(
        default_factory=lambda: ["parquet", "jsonl", "hf"], description="file formats to write")
    push_to_hub: str | None = Field(None, description="also push the DatasetDict to this hub repo (needs $HF_TOKEN)")


def _personas_folder(uri: str) -> str:
    nested = storage.join(uri, "personas")
    return nested if storage.exists(nested) else uri


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()


def join_personas(pairs: pa.Table, personas: pa.Table) -> tuple[list[dict], dict[str, list[dict]]]:
    """Pairs x persona records -> augmented rows, plus the side lists of what could not be used."""
    by_key = {(r["pair_id"], r["side"]): r for r in personas.to_pylist()}
    pair_ids = set(pairs["pair_id"].to_pylist())
    rows, invalid, missing = [], [], []
    for pair in pairs.to_pylist():
        chosen, rejected = by_key.get((pair["pair_id"], "chosen")), by_key.get((pair["pair_id"], "rejected"))
        if chosen is None or rejected is None:
            missing.append({"pair_id": pair["pair_id"],
                            "missing": [s for s, r in (("chosen", chosen), ("rejected", rejected)) if r is None]})
            continue
        # PI marks its own personas; the shared rules run again here, since persona records may come
        # from another tool or from a PI run under older rules.
        checked = {side: validate_persona(r["persona"]) if r["valid"] else None
                   for side, r in (("chosen", chosen), ("rejected", rejected))}
        if not all(c is not None and c.valid for c in checked.values()):
            invalid.append({"pair_id": pair["pair_id"],
                            **{f"{side}_reason": (r["reason"] if checked[side] is None else checked[side].reason)
                               for side, r in (("chosen", chosen), ("rejected", rejected))}})
            continue
        rows.append({**{k: pair[k] for k in ROW_FIELDS[:6]}, "chosen_persona": checked["chosen"].persona,
                     "rejected_persona": checked["rejected"].persona})
    orphans = sorted({pid for pid, _ in by_key if pid not in pair_ids})
    side = {"invalid_personas": invalid, "pairs_without_personas": missing,
            "orphan_personas": [{"pair_id": pid} for pid in orphans]}
    return rows, side


def _write_hf(splits: dict[str, list[dict]], uri: str) -> None:
    import datasets

    features = datasets.Features({name: datasets.Value("string") for name in ROW_FIELDS})
    dataset = datasets.DatasetDict(
        {name: datasets.Dataset.from_list(rows, features=features) for name, rows in splits.items()}
    )
    if not storage.is_s3(uri):
        dataset.save_to_disk(uri)
        return
    with tempfile.TemporaryDirectory() as tmp:  # save locally, then upload file by file
        dataset.save_to_disk(tmp)
        for folder, _, files in os.walk(tmp):
            for name in files:
                path = os.path.join(folder, name)
                with open(path, "rb") as handle:
                    storage.write_bytes(storage.join(uri, os.path.relpath(path, tmp)), handle.read())


def run_augment(cfg: AugmentConfig) -> dict[str, Any]:
    """Join, split and write; returns the manifest."""
    from persona_ray.core import preflight
    from persona_ray.core.ray_runtime import ensure_ray

    preflight.check_input("pairs.input", cfg.pairs.input)
    preflight.check_input("personas", cfg.personas)
    preflight.check_output("output", cfg.output)
    ensure_ray()
    prepared = read_pairs(cfg.pairs).select_columns(["pair_id", "prompt", "chosen", "rejected", "domain", "source",
                                                     "valid"])
    # Driver-side join: fine for the millions of pairs PI produces (a few GB at most).
    tables = [b for b in prepared.iter_batches(batch_format="pyarrow", batch_size=8192)]
    pairs = pa.concat_tables(tables) if tables else pa.table({"pair_id": pa.array([], pa.string())})
    bad_pairs = pairs.num_rows - (pc.sum(pairs["valid"]).as_py() or 0) if pairs.num_rows else 0
    pairs = pairs.filter(pairs["valid"]) if pairs.num_rows else pairs
    personas = read_shards(_personas_folder(cfg.personas), columns=["pair_id", "side", "persona", "valid", "reason"])
    if personas is None:
        raise FileNotFoundError(f"{cfg.personas}: no persona shards found (run `persona-ray infer` first)")
    rows, side = join_personas(pairs, personas)
    splits = split_rows(rows, cfg.splits)

    for name, split in splits.items():
        table = pa.Table.from_pylist(split, schema=pa.schema([(f, pa.string()) for f in ROW_FIELDS]))
        if "parquet" in cfg.formats:
            storage.write_parquet(table, storage.join(cfg.output, f"{name}.parquet"))
        if "jsonl" in cfg.formats:
            storage.write_bytes(storage.join(cfg.output, f"{name}.jsonl"), _jsonl(split))
    if "hf" in cfg.formats:
        _write_hf(splits, storage.join(cfg.output, "hf"))
    for name, items in side.items():
        storage.write_bytes(storage.join(cfg.output, f"{name}.jsonl"), _jsonl(items))
    if cfg.push_to_hub:
        _push(splits, cfg.push_to_hub)

    manifest = {
        "pairs": cfg.pairs.input, "personas": cfg.personas, "output": cfg.output,
        "counts": {
            "pairs_read": pairs.num_rows + bad_pairs, "pairs_invalid_input": bad_pairs,
            "augmented_pairs": len(rows), "excluded_invalid_persona": len(side["invalid_personas"]),
            "pairs_without_personas": len(side["pairs_without_personas"]),
            "orphan_persona_pairs": len(side["orphan_personas"]),
            "splits": {name: len(split) for name, split in splits.items()},
        },
        "splits": cfg.splits.model_dump(),
    }
    storage.write_json(manifest, storage.join(cfg.output, "augment_manifest.json"))
    log.info("augment: %d pairs in splits %s; excluded %d with invalid personas, %d without personas, "
             "%d orphan persona pairs", len(rows), manifest["counts"]["splits"],
             len(side["invalid_personas"]), len(side["pairs_without_personas"]), len(side["orphan_personas"]),
             extra={"stage": "augment", "rows": len(rows), "splits": manifest["counts"]["splits"],
                    "invalid_personas": len(side["invalid_personas"]),
                    "pairs_without_personas": len(side["pairs_without_personas"]),
                    "orphan_personas": len(side["orphan_personas"])})
    return manifest


def _push(splits: dict[str, list[dict]], repo_id: str) -> None:
    import datasets

    if not os.environ.get("HF_TOKEN"):
        raise PermissionError("push_to_hub needs a Hugging Face token in $HF_TOKEN")
    datasets.DatasetDict({n: datasets.Dataset.from_list(r) for n, r in splits.items()}).push_to_hub(
        repo_id, token=os.environ["HF_TOKEN"], private=True)

