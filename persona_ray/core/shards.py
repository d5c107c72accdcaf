"""Resumable output: a folder of Parquet shards, each written whole or not at all.

A job streams result rows to a ShardWriter, which writes a shard every `shard_size` rows, and
also every `commit_every_s` seconds when rows are waiting, so results reach storage steadily
however slowly they come.
A rerun first asks `done_keys` which rows are already there and skips them, so a job killed
at any point and run again ends with every key exactly once. Shards that cannot be read (a
crash on a filesystem without atomic rename) and leftover temporary files are removed first.
"""

from __future__ import annotations

import io
import logging
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from persona_ray.core import storage

log = logging.getLogger(__name__)
SHARD_SUFFIX = ".parquet"


def shard_files(folder: str) -> list[str]:
    return storage.list_files(folder, suffixes=(SHARD_SUFFIX,)) if storage.exists(folder) else []


def personas_folder(uri: str) -> str:
    """A persona-inference output folder's personas/ folder; `uri` itself when it is one."""
    nested = storage.join(uri, "personas")
    return nested if storage.exists(nested) else uri


def shards_dataset(folder: str, columns: list[str]):
    """The folder's shards as a Ray dataset read by workers (None when there are none)."""
    import ray.data

    files = shard_files(folder)
    if not files:
        return None
    fs, _ = storage.filesystem(files[0])
    return ray.data.read_parquet([storage.filesystem(f)[1] for f in files], filesystem=fs, columns=columns)


def _remove_temporary_files(folder: str) -> None:
    if not storage.is_s3(folder):
        import glob
        import os

        for tmp in glob.glob(os.path.join(storage.filesystem(folder)[1], ".*.tmp")):
            os.remove(tmp)


def read_shards(folder: str, columns: list[str] | None = None) -> pa.Table | None:
    tables = [storage.read_parquet(uri, columns=columns) for uri in shard_files(folder)]
    # Shards written before a column was added lack it: it reads as null there.
    return pa.concat_tables(tables, promote_options="default") if tables else None


KEY_SEPARATOR = "\x1f"  # unprintable, so it cannot occur inside an id


def row_keys(table: pa.Table, key_columns: tuple[str, ...]) -> pa.Array:
    """One string key per row, joining the key columns with KEY_SEPARATOR."""
    columns = [pc.cast(table[name], pa.string()) for name in key_columns]
    return pc.binary_join_element_wise(*columns, KEY_SEPARATOR) if len(columns) > 1 else columns[0]


def key_of(*parts: str) -> str:
    """The key `row_keys` gives a row with these key values (for checks against `done_keys`)."""
    return KEY_SEPARATOR.join(parts)


def _read_each_shard(folder: str, read) -> list:
    """read(uri) for every shard of the folder. Leftover temporary files and shards that cannot be
    read (a crash on a filesystem without atomic rename) are deleted, so their rows are recomputed."""
    if not storage.exists(folder):
        return []
    _remove_temporary_files(folder)
    results = []
    for uri in shard_files(folder):
        try:
            results.append(read(uri))
        except Exception as exc:  # noqa: BLE001 - any unreadable shard is redone
            log.warning("removing unreadable shard %s (%s); its rows will be recomputed", uri, exc)
            storage.delete(uri)
    return results


def committed_rows(folder: str) -> int:
    """Rows in the folder's readable shards, from their footers (no row is read)."""
    return sum(_read_each_shard(folder, lambda uri: pq.read_metadata(io.BytesIO(storage.read_bytes(uri))).num_rows))


def done_keys(folder: str, key_columns: tuple[str, ...]) -> pa.Array:
    """Keys of rows already written, each readable shard read once."""
    keys = _read_each_shard(folder, lambda uri: row_keys(storage.read_parquet(uri, columns=list(key_columns)),
                                                           key_columns))
    return pa.chunked_array(keys, pa.string()).combine_chunks() if keys else pa.array([], pa.string())


class ShardWriter:
    """Buffers rows and writes them as numbered shards under a folder."""

    def __init__(self, folder: str, schema: pa.Schema, shard_size: int = 1000, commit_every_s: float | None = 30.0):
        self.folder, self.schema, self.shard_size, self.commit_every_s = folder, schema, shard_size, commit_every_s
        self.last_commit = time.monotonic()
        self.run_tag = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.shards_written = 0
        self.rows_written = 0

    def add(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        self.buffer.append(table)
        self.buffered += table.num_rows
        while self.buffered >= self.shard_size:
            self._flush(self.shard_size)
        if (self.buffered and self.commit_every_s is not None
                and time.monotonic() - self.last_commit >= self.commit_every_s):
            self._flush(self.buffered)

    def close(self) -> None:
        if self.buffered:
            self._flush(self.buffered)

    def _flush(self, rows: int) -> None:
        combined = pa.concat_tables(self.buffer)
        shard, rest = combined.slice(0, rows), combined.slice(rows)
        name = f"part-{self.run_tag}-{self.shards_written:05d}{SHARD_SUFFIX}"
        storage.write_parquet(shard, storage.join(self.folder, name))
        self.last_commit = time.monotonic()
        self.shards_written += 1
        self.rows_written += shard.num_rows
        self.buffer = [rest] if rest.num_rows else []
        self.buffered = rest.num_rows
