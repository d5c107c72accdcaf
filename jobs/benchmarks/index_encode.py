"""ColBERT index encoding in this process vs on a Ray actor pool, side by side, on this machine.

    python jobs/benchmarks/index_encode.py [--prompts 1000] [--workers 2]

Prompts: the first N distinct real texts of the retrieval benchmark's corpus (needs
../shared/data, as jobs/benchmarks/retrieval.py does), MiniLM ColBERT checkpoint, doc_maxlen 128.
Ray is started and the checkpoint built before any timing, as on a running cluster; actor start-up
(each actor imports torch and colbert and loads the checkpoint) is inside the pool's time.

    encode      one pass over every prompt: colbert's CollectionEncoder here vs encode_on_ray
                (shards written by the actors)
    index       the whole `run_index` build (encode + k-means + PLAID), encode_workers 0 vs N.
                colbert's own indexer encodes the k-means sample first and then everything again;
                below ~30k prompts the sample is every prompt, so in-process encodes twice
Ratios are in-process ÷ pool (above 1: the pool is faster). One run each, not averaged.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from retrieval import corpus, require_real_data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    require_real_data()

    from persona_ray.core.ray_runtime import ensure_ray
    from persona_ray.retrieval.colbert_compat import build_minilm_checkpoint
    from persona_ray.retrieval.encode import encode_on_ray, encode_texts, load_encoder
    from persona_ray.retrieval.index import IndexConfig, run_index

    rows = corpus(args.prompts)
    prompts = [r["prompt"] for r in rows]
    checkpoint = build_minilm_checkpoint()
    ensure_ray()
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        encode_texts(load_encoder(checkpoint, 128), prompts)
        seconds["encode_in_process"] = time.perf_counter() - started
        passages = os.path.join(tmp, "passages.parquet")
        pq.write_table(pa.table({"prompt": prompts}), passages)
        started = time.perf_counter()
        pool = encode_on_ray(passages, "prompt", "minilm", doc_maxlen=128, folder=os.path.join(tmp, "shards"),
                             workers=args.workers, batch_size=100)
        seconds["encode_pool"] = time.perf_counter() - started

        data = Path(tmp) / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for name, workers in (("index_in_process", 0), ("index_pool", args.workers)):
            started = time.perf_counter()
            run_index(IndexConfig(data=str(data), output=os.path.join(tmp, name), encode_workers=workers,
                                  encode_batch=100, force=True))
            seconds[name] = time.perf_counter() - started

    print(json.dumps({
        "prompts": len(prompts), "workers": args.workers, "cpus": os.cpu_count(),
        "pool_processes": len(pool["processes"]), "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "encode_ratio_in_process_over_pool": round(seconds["encode_in_process"] / seconds["encode_pool"], 2),
        "index_ratio_in_process_over_pool": round(seconds["index_in_process"] / seconds["index_pool"], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
