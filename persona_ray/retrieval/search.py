"""Retrieve personas for prompts from a ColBERT index of training prompts (the paper's P_retr).

    retriever = PersonaRetriever.load("s3://bucket/index")   # or a local folder
    hits = retriever.search("how do I fix a flat tyre?", k=10)
    hits[0]["chosen_persona"]   # retr-chosen;  hits[0]["rejected_persona"] is retr-rejected

Data contract
    query   a non-empty string of at most MAX_QUERY_CHARS characters (ColBERT reads only its
            first `query_maxlen` tokens, so a longer query is a caller mistake, not a search)
    hit     {"rank", "score", "row_id", "prompt", "chosen_persona", "rejected_persona", "split",
            "domain"}, best first; only training rows exist in the index (see index.py)

Batch retrieval over a whole split is in batch.py. Retrieved personas are model/user text:
consumers must treat them as untrusted input.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any


from persona_ray.core.errors import UserError
from persona_ray.core import storage
from persona_ray.retrieval import colbert_compat
from persona_ray.core.models import default_cache_dir

MAX_QUERY_CHARS = 8000
RETRIEVED_COLUMNS = ("retr_row_id", "retr_score", "retr_prompt", "retr_chosen_persona", "retr_rejected_persona",
                     "retr_error")


class QueryError(UserError):
    """A query that cannot be searched; the message says why."""


def check_query(query: Any, max_chars: int = MAX_QUERY_CHARS) -> str:
    if not isinstance(query, str):
        raise QueryError(f"query must be a string, got {type(query).__name__}")
    text = query.strip()
    if not text:
        raise QueryError("query is empty")
    if len(text) > max_chars:
        raise QueryError(f"query is {len(text)} characters long; the limit is {max_chars}")
    if "\x00" in text:
        raise QueryError("query contains a NUL character")
    return text


def local_copy(index_uri: str) -> str:
    """A local folder holding the complete index (downloaded once per fingerprint from S3)."""
    manifest_uri = storage.join(index_uri, "manifest.json")
    if not storage.exists(manifest_uri):
        raise FileNotFoundError(f"{index_uri}: no manifest.json — not a complete index (run `persona-ray index`)")
    if not storage.is_s3(index_uri):
        return os.path.abspath(index_uri)
    manifest = storage.read_json(manifest_uri)
    folder = default_cache_dir() / "indexes" / manifest["fingerprint"]
    if folder.exists():
        return str(folder)
    # Several replicas on one node may load at once: each downloads into its own scratch folder
    # and renames it into place; the first rename wins and the others drop their copy.
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{manifest['fingerprint'][:12]}-", dir=folder.parent)
    for part in ("colbert", "checkpoint"):
        storage.copy_dir(storage.join(index_uri, part), os.path.join(scratch, part))
    storage.write_bytes(os.path.join(scratch, "rows.parquet"), storage.read_bytes(storage.join(index_uri, "rows.parquet")))
    storage.write_json(manifest, os.path.join(scratch, "manifest.json"))
    try:
        os.rename(scratch, folder)
    except OSError:  # another process finished first
        shutil.rmtree(scratch, ignore_errors=True)
    return str(folder)


class PersonaRetriever:
    """ColBERT search over training prompts, returning their rows (with personas)."""

    def __init__(self, folder: str):
        _, Searcher, ColBERTConfig, _, _ = colbert_compat.colbert_modules()
        self.rows = storage.read_parquet(os.path.join(folder, "rows.parquet")).to_pylist()
        self.searcher = Searcher(index=os.path.join(folder, "colbert"), checkpoint=os.path.join(folder, "checkpoint"),
                                 collection=[r["prompt"] for r in self.rows], config=ColBERTConfig(gpus=0),
                                 verbose=0)

    @classmethod
    def load(cls, index_uri: str) -> "PersonaRetriever":
        return cls(local_copy(index_uri))

    def __len__(self) -> int:
        return len(self.rows)

    def search(self, text: Any, k: int = 10) -> list[dict]:
        query = check_query(text)
        if not isinstance(k, int) or k < 1:
            raise QueryError(f"k must be a positive integer, got {k!r}")
        pids, _, scores = self.searcher.search(query, k=min(k, len(self.rows)))
        return [{"rank": rank, "score": float(score), **self.rows[pid]}
                for rank, (pid, score) in enumerate(zip(pids, scores), start=1)]

    def retrieved(self, text: Any) -> dict[str, Any]:
        """RETRIEVED_COLUMNS from the top hit (retr-chosen / retr-rejected personas); QueryError if bad."""
        top = self.search(text, k=1)[0]
        return {"retr_row_id": top["row_id"], "retr_score": top["score"], "retr_prompt": top["prompt"],
                "retr_chosen_persona": top["chosen_persona"], "retr_rejected_persona": top["rejected_persona"],
                "retr_error": None}
