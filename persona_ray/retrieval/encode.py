"""ColBERT passage embeddings computed on a Ray actor pool, stored as shards for the PLAID build.

    summary = encode_on_ray("s3://b/rows.parquet", "prompt", "minilm", doc_maxlen=128,
                            folder="s3://b/index/_encoded", workers=8, batch_size=1000)
    embeddings = ShardedEmbeddings("s3://b/index/_encoded", passages=summary["passages"])
    embs, doclens = embeddings.encode_passages([0, 1, 2])   # what colbert's CollectionEncoder returns

Encoding is the slow part of indexing: a BERT pass per passage, and colbert's own indexer encodes
its k-means sample first and then everything (below ~30k passages the sample is every passage).
Here every passage is encoded once, by `workers` actors that each load the checkpoint once; each
actor writes what it encodes straight to `folder`, one shard per batch of consecutive passages, so
the driver never holds the collection's embeddings: the PLAID build reads them back one chunk
(index.PLAID_CHUNK_PASSAGES) at a time (index.py).

Shard format: <folder>/<first passage id:012d>-<passages>.npz with
    embs     float16 [tokens, dim]   token vectors of the passages, in passage order
    doclens  int32 [passages]        tokens per passage
    worker   str                     "<host>:<pid>" of the process that encoded them
`folder` must be reachable from every node (an s3:// prefix on a multi-node cluster).

`encode_texts` and `write_shard` know nothing of Ray; `_EncodeActor` and `encode_on_ray` are the
Ray Data plumbing around them.
"""

from __future__ import annotations

import bisect
import io
import os
import socket
from typing import Any

import numpy as np

from persona_ray.core import storage
from persona_ray.retrieval import colbert_compat

SHARD_SUFFIX = ".npz"


def load_encoder(checkpoint: str, doc_maxlen: int):
    """colbert's CollectionEncoder over `checkpoint` on CPU, configured as its Indexer would be."""
    colbert_compat.apply()
    from colbert.indexing.collection_encoder import CollectionEncoder
    from colbert.infra import ColBERTConfig
    from colbert.modeling.checkpoint import Checkpoint

    config = ColBERTConfig.from_existing(ColBERTConfig.load_from_checkpoint(checkpoint),
                                         ColBERTConfig(doc_maxlen=doc_maxlen, checkpoint=checkpoint, gpus=0))
    return CollectionEncoder(config, Checkpoint(checkpoint, colbert_config=config, verbose=0))


def encode_texts(encoder, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(float16 token vectors [tokens, dim], int32 doclens [passages]) of `texts`, in order."""
    embs, doclens = encoder.encode_passages(list(texts))
    return embs.half().numpy(), np.asarray(doclens, dtype=np.int32)


def shard_name(first: int, count: int) -> str:
    return f"{first:012d}-{count}{SHARD_SUFFIX}"


def write_shard(folder: str, first: int, embs: np.ndarray, doclens: np.ndarray, worker: str) -> str:
    """Write one shard (whole or not at all); returns its URI."""
    buffer = io.BytesIO()
    np.savez(buffer, embs=embs, doclens=doclens, worker=np.array(worker))
    uri = storage.join(folder, shard_name(first, len(doclens)))
    storage.write_bytes(uri, buffer.getvalue())
    return uri


def read_shard(uri: str) -> dict[str, Any]:
    with np.load(io.BytesIO(storage.read_bytes(uri))) as data:
        return {"embs": data["embs"], "doclens": data["doclens"], "worker": str(data["worker"])}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ShardedEmbeddings:
    """The shards in `folder` as colbert's encoder: `encode_passages(passage ids)` → (embs, doclens).

    Every id in 0..passages-1 must be in exactly one shard (checked on construction). One shard is
    held at a time: colbert asks for its chunks in id order and for its k-means sample sorted.
    """

    def __init__(self, folder: str, passages: int):
        self.uris = storage.list_files(folder, suffixes=(SHARD_SUFFIX,)) if storage.exists(folder) else []
        spans = [tuple(int(x) for x in os.path.basename(uri)[:-len(SHARD_SUFFIX)].split("-")) for uri in self.uris]
        self.starts = [first for first, _ in spans]
        expected = 0
        for first, count in spans:
            if first != expected:
                raise ValueError(f"{folder}: embedding shards do not cover passages {expected}..{first - 1} "
                                 "(a worker on another node writing to its own disk? use an s3:// output)")
            expected = first + count
        if expected != passages:
            raise ValueError(f"{folder}: embedding shards cover {expected} passages, the collection has {passages}")
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None
        self.workers: set[str] = set()

    def _shard(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cached is None or self._cached[0] != index:
            shard = read_shard(self.uris[index])
            self.workers.add(shard["worker"])
            offsets = np.concatenate([[0], np.cumsum(shard["doclens"], dtype=np.int64)])
            self._cached = (index, shard["embs"], offsets)
        return self._cached[1], self._cached[2]

    def encode_passages(self, pids):
        """Same contract as colbert's CollectionEncoder.encode_passages, for passage ids."""
        import torch

        if len(pids) == 0:
            return None, None
        parts, doclens = [], []
        for pid in pids:
            index = bisect.bisect_right(self.starts, pid) - 1
            embs, offsets = self._shard(index)
            local = pid - self.starts[index]
            parts.append(embs[offsets[local]:offsets[local + 1]])
            doclens.append(int(offsets[local + 1] - offsets[local]))
        # float32, as colbert's CPU encoder returns (it halves them itself); float16 → 32 is exact.
        return torch.from_numpy(np.concatenate(parts)).float(), doclens


def same_checkpoint(checkpoint: str, checkpoint_digest: str) -> str:
    """`checkpoint` resolved on this node; refuses to go on unless it is the model the driver resolved."""
    local = colbert_compat.resolve_checkpoint(checkpoint)
    if colbert_compat.folder_digest(local) != checkpoint_digest:
        raise RuntimeError(f"checkpoint {checkpoint!r} on {socket.gethostname()} ({local}) is not the one the "
                           "driver indexes with: give a folder every node has the same copy of")
    return local


class _EncodeActor:
    """Ray Data map_batches callable: loads the checkpoint once, writes one shard per batch."""

    def __init__(self, checkpoint: str, checkpoint_digest: str, doc_maxlen: int, folder: str):
        self.encoder = load_encoder(same_checkpoint(checkpoint, checkpoint_digest), doc_maxlen)
        self.folder = folder

    def __call__(self, batch: dict) -> dict:
        pids, texts = [int(p) for p in batch["pid"]], [str(t) for t in batch["text"]]
        out: dict[str, list] = {"first": [], "passages": [], "tokens": [], "worker": []}
        for start, end in consecutive_runs(pids):  # one run: passage_blocks keeps them in order
            embs, doclens = encode_texts(self.encoder, texts[start:end])
            write_shard(self.folder, pids[start], embs, doclens, worker_name())
            for key, value in (("first", pids[start]), ("passages", end - start), ("tokens", len(embs)),
                               ("worker", worker_name())):
                out[key].append(value)
        return out


def consecutive_runs(pids: list[int]) -> list[tuple[int, int]]:
    """[(start, end)) index ranges of `pids` over which the ids go up by one."""
    breaks = [i for i in range(1, len(pids)) if pids[i] != pids[i - 1] + 1]
    return list(zip([0, *breaks], [*breaks, len(pids)]))


def _passage_batch(batch: dict, column: str) -> dict:
    """Rows of the passages file (with LINE_WHERE) -> {"pid": row number from 0, "text"}."""
    from persona_ray.inference.readers import LINE_WHERE, where_number

    return {"pid": np.array([where_number(w) - 1 for w in batch[LINE_WHERE]], dtype=np.int64),
            "text": batch[column]}


def passage_blocks(passages: str, column: str, batch_size: int):
    """The passages as a materialized Ray dataset of {"pid", "text"} blocks: batch_size consecutive
    passages each (the last may have fewer), in passage order; each block is one actor batch.

    Ray Data cuts the read into blocks of its own size and, left to itself, hands them on in the
    order their tasks finish; the repartition then fills a block from the end of one and the start
    of another, which puts passages far apart in one batch (seen: 61 shards for 60 batches).
    preserve_order keeps them in passage order, so the blocks are cut in order too."""
    from persona_ray.inference.readers import read_input

    read = read_input(passages, located=True)
    read.context.execution_options.preserve_order = True  # copied to the datasets derived from it
    blocks = read.map_batches(_passage_batch, fn_args=(column,), batch_format="numpy")
    # Materialized (in the object store) before the pool starts: the actors may hold every CPU of a
    # small cluster, and the read and the repartition, left to run beside them, would never get one.
    return blocks.repartition(target_num_rows_per_block=batch_size, strict=True).materialize()


def encode_on_ray(passages: str, column: str, checkpoint: str, *, doc_maxlen: int, folder: str, workers: int,
                  batch_size: int) -> dict[str, Any]:
    """Encode the texts in `column` of the Parquet file `passages` (passage id = row number from 0)
    into shards in `folder`, on `workers` Ray actors.

    The file is read by Ray Data tasks, so the texts never pass through this process; it and
    `folder` must be reachable from every node. `checkpoint` is the config's name ('minilm' or a
    folder); each actor resolves it on its own node and refuses to run unless it is the same model
    the driver resolved. Returns {"shards", "passages", "tokens", "processes"} (processes: distinct
    worker processes that wrote shards, "<host>:<pid>" each).
    """
    import ray

    from persona_ray.core.ray_runtime import ensure_ray

    ensure_ray()
    storage.delete(folder)  # shards of an earlier, interrupted build
    digest = colbert_compat.folder_digest(colbert_compat.resolve_checkpoint(checkpoint))
    written = passage_blocks(passages, column, batch_size).map_batches(
        _EncodeActor, fn_constructor_kwargs={"checkpoint": checkpoint, "checkpoint_digest": digest,
                                             "doc_maxlen": doc_maxlen, "folder": folder},
        compute=ray.data.ActorPoolStrategy(size=workers), batch_size=None, batch_format="numpy",
        num_cpus=1).take_all()
    return {"shards": len(written), "passages": sum(int(w["passages"]) for w in written),
            "tokens": sum(int(w["tokens"]) for w in written),
            "processes": sorted({str(w["worker"]) for w in written})}
