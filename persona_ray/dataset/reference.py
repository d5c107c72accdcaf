"""The reference persona set: preference pairs this project wrote by hand, in the four domains
(safety_qa, dialogue, reddit, mnemonic), each with a hand-written chosen AND rejected persona —
specific to the pair, different from each other, in the persona form, no protected attributes.
It is the truth PI is scored against (pi-eval's `reference`) and a teacher a PI student learns
from (`persona-ray train pi --data <the folder write_reference writes>`).

    >>> rows = reference_rows("test")
    >>> sorted({row["domain"] for row in rows})
    ['dialogue', 'mnemonic', 'reddit', 'safety_qa']

Data: persona_ray/data/reference/<domain>.jsonl, one object a line:
    {"id", "domain", "prompt", "chosen", "rejected", "chosen_persona", "rejected_persona"}
Splits by prompt (dataset/splits.assign_split with REFERENCE_SPLITS, its own seed): test about
a quarter of the prompts, validation a tenth, train the rest; a prompt is in one split only.
"""

from __future__ import annotations

import json
from importlib import resources

import pyarrow as pa

from persona_ray.core import storage
from persona_ray.dataset.splits import SplitSettings, assign_split

DOMAINS = ("safety_qa", "dialogue", "reddit", "mnemonic")
REFERENCE_SPLITS = SplitSettings(test=0.25, fewshot=0.0, val=0.1, seed="persona-ray-reference-v1")
FIELDS = ("id", "domain", "prompt", "chosen", "rejected", "chosen_persona", "rejected_persona")


def _split(prompt: str) -> str:
    name = assign_split(prompt, REFERENCE_SPLITS)
    return {"sft_train": "train", "sft_val": "val"}.get(name, name)


def reference_rows(split: str | None = None) -> list[dict]:
    """The reference pairs (all, or one split: "train", "val", "test"), in file order, each with
    `pair_id` (= id), `source` ("reference") and `split` added."""
    folder = resources.files("persona_ray.data").joinpath("reference")
    rows = []
    for domain in DOMAINS:
        for number, line in enumerate(folder.joinpath(f"{domain}.jsonl").read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [f for f in FIELDS if not isinstance(row.get(f), str) or not row[f].strip()]
            if missing:
                raise ValueError(f"reference/{domain}.jsonl line {number}: missing or empty {missing}")
            rows.append({**row, "pair_id": row["id"], "source": "reference", "split": _split(row["prompt"])})
    return [row for row in rows if split is None or row["split"] == split]


def write_reference(folder: str) -> dict[str, int]:
    """The reference set as an augmented folder (<split>.parquet in the layout training and
    pi-eval read: train as sft_train and dpo_train, val as sft_val and dpo_val, test). Returns
    rows per split."""
    from persona_ray.dataset.augment import ROW_FIELDS, ROW_SCHEMA

    names = {"train": ("sft_train", "dpo_train"), "val": ("sft_val", "dpo_val"), "test": ("test",)}
    counts = {}
    for split, files in names.items():
        rows = reference_rows(split)
        table = pa.Table.from_pylist([{f: row[f] for f in ROW_FIELDS} for row in rows], schema=ROW_SCHEMA)
        for name in files:
            storage.write_parquet(table, storage.join(folder, f"{name}.parquet"))
        counts[split] = len(rows)
    return counts
