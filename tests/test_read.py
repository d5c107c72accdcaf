"""Input readers: JSONL, Parquet, saved Hugging Face datasets, local folders and s3://."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from persona_ray.core import storage
from persona_ray.inference.readers import JSON_LINE, InputError, read_input
from tests.helpers import read_jsonl
from tests.helpers import FIXTURES

pytestmark = pytest.mark.usefixtures("ray_local")


def _rows(ds) -> list[dict]:
    rows = ds.take_all()
    return [json.loads(r[JSON_LINE]) if JSON_LINE in r else r for r in rows]


def test_jsonl_file_and_folder():
    expected = read_jsonl(FIXTURES / "shp.jsonl")
    # Ray Data may hand blocks back in any order: compare the rows, not their order.
    assert sorted(_rows(read_input(str(FIXTURES / "shp.jsonl"))), key=json.dumps) == sorted(expected, key=json.dumps)
    assert len(_rows(read_input(str(FIXTURES)))) == 20  # four fixture files


def test_parquet_folder(tmp_path):
    rows = read_jsonl(FIXTURES / "flat.jsonl")
    pq.write_table(pa.Table.from_pylist(rows[:2]), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), tmp_path / "b.parquet")
    got = sorted(_rows(read_input(str(tmp_path))), key=lambda r: r["prompt"])
    assert got == sorted(rows, key=lambda r: r["prompt"])


def test_saved_hugging_face_dataset_dict(tmp_path):
    import datasets

    rows = read_jsonl(FIXTURES / "pku_saferlhf.jsonl")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:3]),
                          "test": datasets.Dataset.from_list(rows[3:])}).save_to_disk(str(tmp_path / "hf"))
    assert len(_rows(read_input(str(tmp_path / "hf"), split="test"))) == 2
    with pytest.raises(InputError, match="no split 'validation'"):
        read_input(str(tmp_path / "hf"), split="validation")


def test_s3_parquet_and_jsonl(s3_bucket):
    rows = read_jsonl(FIXTURES / "hh_rlhf.jsonl")
    storage.write_parquet(pa.Table.from_pylist(rows), f"s3://{s3_bucket}/in/pairs.parquet")
    storage.write_bytes(f"s3://{s3_bucket}/jsonl/pairs.jsonl", (FIXTURES / "hh_rlhf.jsonl").read_bytes())
    assert _rows(read_input(f"s3://{s3_bucket}/in/")) == rows
    assert _rows(read_input(f"s3://{s3_bucket}/jsonl/pairs.jsonl")) == rows


def test_missing_or_mixed_input_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no .jsonl, .json or .parquet file"):
        read_input(str(tmp_path / "nothing"))
    (tmp_path / "a.jsonl").write_text("{}\n")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "b.parquet")
    with pytest.raises(InputError, match="mixes Parquet and JSON"):
        read_input(str(tmp_path))
