"""The paper's released dataset (`nbalepur/persona-tailoring` on the Hugging Face hub) as an
augmented folder this project trains and evaluates on.

Data contract (the dataset card): configs "BeaverTails", "Anthropic HHH", "Mnemonic"; splits
fewshot, sft_train, sft_val, dpo_train, dpo_val, test (HHH: 5 / 424 / 105 / 423 / 107 / 500); all
columns text:
    prompt, chosen, rejected                               the preference pair
    chosen_persona_gold, rejected_persona_gold             personas inferred for each response
    chosen_persona_retr, rejected_persona_retr             personas retrieved for the prompt
Output: <output>/<split>.parquet with this project's row fields (pair_id "<config>-<split>-<row>",
domain from the config, source "persona-tailoring") plus retr_chosen_persona /
retr_rejected_persona (what `persona-ray retrieve` would write), quarantine.jsonl (rows with a
missing or empty field, or a persona that fails the persona rules, with the field and reason) and
import_manifest.json.

Sources: a local folder or s3:// prefix holding <split>.parquet / <split>.jsonl (or the hub's own
layout, <config>/<split>-*.parquet), or hf://<owner>/<name> where a hub is reachable.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
from pydantic import Field

from persona_ray.core import storage
from persona_ray.core.persona import validate_persona
from persona_ray.core.settings import Settings
from persona_ray.dataset.augment import ROW_FIELDS
from persona_ray.dataset.splits import SPLITS, read_table, split_uri

RELEASED_COLUMNS = ("prompt", "chosen", "rejected", "chosen_persona_gold", "rejected_persona_gold",
                    "chosen_persona_retr", "rejected_persona_retr")
CONFIG_DOMAINS = {"BeaverTails": "safety_qa", "Anthropic HHH": "dialogue", "Mnemonic": "mnemonic"}
RETRIEVED_FIELDS = ("retr_chosen_persona", "retr_rejected_persona")
SOURCE = "persona-tailoring"
HF_PREFIX = "hf://"


class ImportReleasedConfig(Settings):
    """Read the paper's released dataset into an augmented folder (its fixed splits kept)."""

    source: str = Field(description="folder / s3:// prefix with <split>.parquet|.jsonl (or <config>/<split>-*.parquet), "
                        "or hf://nbalepur/persona-tailoring where a hub is reachable")
    subset: str = Field(description="the dataset's config (subset): BeaverTails, Anthropic HHH or Mnemonic")
    output: str = Field(description="augmented folder to write (local or s3://)")
    splits: list[str] = Field(default_factory=lambda: list(SPLITS), description="splits to import")


def adapt_released_row(row: dict[str, Any], config: str, split: str, number: int) -> dict[str, str]:
    """One released row -> this project's row; ValueError("<field>: <reason>") when it cannot be used."""
    for column in RELEASED_COLUMNS:
        value = row.get(column)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{column}: missing, empty or not text")
    for column in ("chosen_persona_gold", "rejected_persona_gold", "chosen_persona_retr", "rejected_persona_retr"):
        check = validate_persona(row[column])
        if not check.valid:
            raise ValueError(f"{column}: {check.reason}")
    return {
        "pair_id": f"{config.replace(' ', '_')}-{split}-{number}", "prompt": row["prompt"], "chosen": row["chosen"],
        "rejected": row["rejected"], "domain": CONFIG_DOMAINS.get(config, "safety_qa"), "source": SOURCE,
        "chosen_persona": row["chosen_persona_gold"], "rejected_persona": row["rejected_persona_gold"],
        "retr_chosen_persona": row["chosen_persona_retr"], "retr_rejected_persona": row["rejected_persona_retr"],
    }


def read_released_split(source: str, config: str, split: str) -> list[dict]:
    """Rows of one split, in the dataset's order; FileNotFoundError naming what was looked for."""
    if source.startswith(HF_PREFIX):
        import datasets

        try:
            return list(datasets.load_dataset(source[len(HF_PREFIX):], config, split=split))
        except Exception as exc:  # hub unreachable, unknown config/split: one line that says where
            raise FileNotFoundError(f"{source} ({config}, {split}): {type(exc).__name__}: {exc}") from None
    for candidate in (split_uri(source, split), storage.join(source, f"{split}.jsonl")):
        if storage.exists(candidate):
            return read_table(candidate)
    hub_layout = sorted(uri for uri in storage.list_files(storage.join(source, config))
                        if uri.rsplit("/", 1)[-1].startswith(f"{split}-") and uri.endswith(".parquet")) \
        if storage.is_dir(storage.join(source, config)) else []
    if hub_layout:
        return [row for uri in hub_layout for row in read_table(uri)]
    raise FileNotFoundError(f"{source}: no {split}.parquet, {split}.jsonl or {config}/{split}-*.parquet")


def run_import_released(cfg: ImportReleasedConfig) -> dict[str, Any]:
    """Adapt every split; bad rows go to quarantine.jsonl with the field and reason."""
    schema = pa.schema([(name, pa.string()) for name in (*ROW_FIELDS, *RETRIEVED_FIELDS)])
    counts: dict[str, int] = {}
    quarantine = []
    for split in cfg.splits:
        rows = []
        for number, row in enumerate(read_released_split(cfg.source, cfg.subset, split)):
            try:
                rows.append(adapt_released_row(row, cfg.subset, split, number))
            except ValueError as exc:
                quarantine.append({"split": split, "row": number, "reason": str(exc)})
        storage.write_parquet(pa.Table.from_pylist(rows, schema=schema), split_uri(cfg.output, split))
        counts[split] = len(rows)
    storage.write_bytes(storage.join(cfg.output, "quarantine.jsonl"),
                        "".join(json.dumps(q) + "\n" for q in quarantine).encode())
    manifest = {"source": cfg.source, "subset": cfg.subset, "splits": counts, "quarantined": len(quarantine)}
    storage.write_json(manifest, storage.join(cfg.output, "import_manifest.json"))
    return manifest
