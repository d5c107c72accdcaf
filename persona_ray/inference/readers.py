"""Open an input dataset as a streaming Ray Dataset.

Accepted inputs (local path or s3:// URI):
    *.jsonl / *.json   JSON Lines, read as text and parsed row by row, so one broken line is
                       quarantined instead of failing the read (column JSON_LINE)
    *.parquet          Parquet files
    a folder           every .jsonl/.json/.parquet file in it (one kind per folder)
    a saved Hugging Face dataset folder (load_from_disk) -- `split` picks from a DatasetDict
    hf://NAME          a Hugging Face hub dataset (load_dataset(NAME, split=split))
"""

from __future__ import annotations

import os

import ray.data

from persona_ray.core import storage

JSON_LINE = "_json_line"
_JSON_SUFFIXES = (".jsonl", ".json")
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


class InputError(ValueError):
    """The input cannot be opened; the message says what was expected."""


def _is_saved_hf_dataset(uri: str) -> bool:
    return not storage.is_s3(uri) and os.path.isdir(uri) and any(
        os.path.exists(os.path.join(uri, marker)) for marker in _HF_MARKERS
    )


def _from_huggingface(uri: str, split: str) -> ray.data.Dataset:
    import datasets

    if uri.startswith("hf://"):
        data = datasets.load_dataset(uri[len("hf://"):], split=split)
    else:
        data = datasets.load_from_disk(uri)
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise InputError(f"{uri}: no split '{split}' (has {sorted(data)})")
            data = data[split]
    return ray.data.from_huggingface(data)


def read_input(uri: str, split: str = "train") -> ray.data.Dataset:
    if uri.startswith("hf://") or _is_saved_hf_dataset(uri):
        return _from_huggingface(uri, split)
    files = storage.list_files(uri, suffixes=(*_JSON_SUFFIXES, ".parquet"))
    if not files:
        raise InputError(f"{uri}: no .jsonl, .json or .parquet file found")
    kinds = {"parquet" if f.endswith(".parquet") else "json" for f in files}
    if len(kinds) > 1:
        raise InputError(f"{uri}: mixes Parquet and JSON files; point at one kind")
    fs, _ = storage.filesystem(uri)
    paths = [storage.filesystem(f)[1] for f in files]
    if kinds == {"parquet"}:
        return ray.data.read_parquet(paths, filesystem=fs)
    return ray.data.read_text(paths, filesystem=fs, drop_empty_lines=True).rename_columns({"text": JSON_LINE})
