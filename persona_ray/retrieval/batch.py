"""Batch retrieval: the top hit's personas for every row of a split, as a Ray Data step.

    persona-ray retrieve --index s3://bucket/index --data outputs/augmented --split test --output out/

`retrieve_rows` adds RETRIEVED_COLUMNS (search.py) to each row of a Ray Dataset, with one loaded
index per actor; rows whose query is bad get `retr_error` instead of failing the job, and
`run_retrieve` writes them to <split>.quarantine.jsonl with the reason.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import Field

from persona_ray.core import storage
from persona_ray.core.schema import row_id
from persona_ray.core.settings import Settings
from persona_ray.dataset.splits import TEST_SPLIT
from persona_ray.retrieval.search import RETRIEVED_COLUMNS, PersonaRetriever, QueryError

log = logging.getLogger(__name__)


class _RetrieverActor:
    """Ray Data map_batches callable: one loaded index per actor."""

    def __init__(self, index_uri: str, query_column: str):
        self.retriever = PersonaRetriever.load(index_uri)
        self.query_column = query_column

    def __call__(self, batch: dict) -> dict:
        out = {name: [] for name in RETRIEVED_COLUMNS}
        for query in batch[self.query_column]:
            try:
                found = self.retriever.retrieved(query)
            except QueryError as exc:
                found = {"retr_error": f"{self.query_column}: {exc}"}
            for name in RETRIEVED_COLUMNS:
                out[name].append(found.get(name))
        return {**{key: list(value) for key, value in batch.items()}, **out}


def retrieve_rows(ds, index_uri: str, *, query_column: str = "prompt", concurrency: int = 1,
                  batch_size: int = 64):
    """Ray Dataset → same rows plus RETRIEVED_COLUMNS from the top hit for each row's query."""
    import ray

    return ds.map_batches(_RetrieverActor, fn_constructor_kwargs={"index_uri": index_uri, "query_column": query_column},
                          compute=ray.data.ActorPoolStrategy(size=concurrency), batch_size=batch_size,
                          batch_format="numpy", num_cpus=1)


class RetrieveConfig(Settings):
    """Retrieved personas (top training prompt) for every row of a split."""

    index: str = Field(description="folder or s3:// prefix written by `persona-ray index`")
    data: str = Field(description="augmented folder (reads <split>.parquet) or a .jsonl/.parquet file")
    split: str = Field(TEST_SPLIT, description="the split to retrieve for")
    output: str = Field(description="writes <output>/<split>.parquet and <split>.quarantine.jsonl")
    query_column: str = Field("prompt", description="the column searched with")
    concurrency: int = Field(1, ge=1, description="retriever actors (one loaded index each)")
    batch_size: int = Field(64, ge=1, description="rows per batch sent to one actor")


def run_retrieve(cfg: RetrieveConfig) -> dict[str, Any]:
    """Top-1 retrieved personas for every row of a split; bad queries are quarantined."""
    import pyarrow as pa
    import ray

    from persona_ray.dataset.splits import read_split
    from persona_ray.core.ray_runtime import ensure_ray

    from persona_ray.core import preflight

    preflight.check_input("index", cfg.index)
    preflight.check_input("data", cfg.data)
    preflight.check_output("output", cfg.output)
    rows = read_split(cfg.data, cfg.split)
    if not rows:
        raise ValueError(f"{cfg.data} ({cfg.split}): no rows")
    ensure_ray()
    # Queries travel as a JSON-free string column; non-strings become "" and then a retr_error.
    items = [{"_row": i, "_query": q if isinstance(q, str) else ""} for i, q in
             enumerate(r.get(cfg.query_column) for r in rows)]
    found = retrieve_rows(ray.data.from_items(items), cfg.index, query_column="_query",
                          concurrency=cfg.concurrency, batch_size=cfg.batch_size).take_all()
    good, bad = [], []
    for hit in sorted(found, key=lambda h: h["_row"]):
        row = rows[int(hit["_row"])]
        if hit["retr_error"] is None:
            good.append({**row, **{c: hit[c] for c in RETRIEVED_COLUMNS if c != "retr_error"}})
        else:
            bad.append({"row": int(hit["_row"]), "row_id": row_id(row),
                        "reason": hit["retr_error"] if isinstance(row.get(cfg.query_column), str)
                        else f"{cfg.query_column}: missing or not a string"})
    if good:
        storage.write_parquet(pa.Table.from_pylist(good), storage.join(cfg.output, f"{cfg.split}.parquet"))
    storage.write_bytes(storage.join(cfg.output, f"{cfg.split}.quarantine.jsonl"),
                        "".join(json.dumps(b) + "\n" for b in bad).encode())
    log.info("retrieve: %d rows of %s (%s) got personas, %d quarantined", len(good), cfg.data, cfg.split, len(bad),
             extra={"stage": "retrieve", "rows": len(rows), "retrieved": len(good), "quarantined": len(bad)})
    return {"rows": len(rows), "retrieved": len(good), "quarantined": len(bad), "output": cfg.output}
