"""Open an input dataset as a streaming Ray Dataset.

Accepted inputs (local path or s3:// URI):
    *.jsonl / *.json   JSON Lines, read as bytes and split on "\n" only (a JSON string may hold
                       U+2028 and friends), parsed row by row later, so one broken line is
                       quarantined instead of failing the read: columns JSON_LINE (the line;
                       undecodable bytes shown as \\xNN), LINE_ERROR ("" or why the line is not
                       text) and LINE_WHERE ("file:line")
    *.parquet          Parquet files
    a folder           every .jsonl/.json/.parquet file in it (one kind per folder)
    a saved Hugging Face dataset folder (load_from_disk) -- `split` picks from a DatasetDict
    hf://NAME          a Hugging Face hub dataset (load_dataset(NAME, split=split))
"""

from __future__ import annotations

import os
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
from ray.data.datasource import FileBasedDatasource

from persona_ray.core.errors import UserError
from persona_ray.core import storage

JSON_LINE = "_json_line"
LINE_ERROR = "_line_error"
LINE_WHERE = "_line_where"
LINES_PER_BLOCK = 512  # small blocks: rows flow on through the pipeline while a big file is read
_JSON_SUFFIXES = (".jsonl", ".json")
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


class InputError(UserError):
    """The input cannot be opened; the message says what was expected."""


class JsonLinesDatasource(FileBasedDatasource):
    """Lines of UTF-8 text, one row each, that never fail on the bytes they hold.

    Ray's read_text decodes a whole file at once (one bad byte fails the job) and splits on every
    Unicode line break; here each line is decoded on its own and split on "\n" only.
    """

    def _read_stream(self, f: "pa.NativeFile", path: str) -> Iterator[pa.Table]:
        name = os.path.basename(path)
        rows: dict[str, list[str]] = {JSON_LINE: [], LINE_ERROR: [], LINE_WHERE: []}
        data = f.readall().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (Windows editors)
        for number, raw in enumerate(data.split(b"\n"), start=1):
            raw = raw.removesuffix(b"\r")
            if not raw.strip():
                continue
            try:
                line, error = raw.decode("utf-8"), ""
            except UnicodeDecodeError as exc:
                line = raw.decode("utf-8", errors="backslashreplace")
                error = f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start} of the line)"
            rows[JSON_LINE].append(line)
            rows[LINE_ERROR].append(error)
            rows[LINE_WHERE].append(f"{name}:{number}")
            if len(rows[JSON_LINE]) == LINES_PER_BLOCK:
                yield pa.table(rows)
                rows = {column: [] for column in rows}
        if rows[JSON_LINE]:
            yield pa.table(rows)


class ParquetRowsDatasource(FileBasedDatasource):
    """Parquet rows, each with LINE_WHERE ("file:row", counted from 1) so a bad row can be named.

    Ray's read_parquet does not tell a row's place in its file; here a file is read in batches of
    its row groups (random access, never the whole file at once) and the rows are counted.
    """

    def _open_input_source(self, filesystem, path: str, **open_args) -> "pa.NativeFile":
        return filesystem.open_input_file(path)  # Parquet's footer is at the end: not a stream

    def _read_stream(self, f: "pa.NativeFile", path: str) -> Iterator[pa.Table]:
        name, first = os.path.basename(path), 1
        for batch in pq.ParquetFile(f).iter_batches(batch_size=LINES_PER_BLOCK):
            table = pa.Table.from_batches([batch])
            where = pa.array([f"{name}:{first + i}" for i in range(table.num_rows)], pa.string())
            yield table.append_column(LINE_WHERE, where)
            first += table.num_rows


def where_number(where: str) -> int:
    """The line or row number of a LINE_WHERE value ("file:17" -> 17)."""
    return int(where.rsplit(":", 1)[1])


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


def read_input(uri: str, split: str = "train", located: bool = False) -> ray.data.Dataset:
    """The rows of `uri` (see the module docstring); `located`: Parquet rows also carry LINE_WHERE."""
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
        if located:
            return ray.data.read_datasource(ParquetRowsDatasource(paths, filesystem=fs))
        return ray.data.read_parquet(paths, filesystem=fs)
    return ray.data.read_datasource(JsonLinesDatasource(paths, filesystem=fs))
