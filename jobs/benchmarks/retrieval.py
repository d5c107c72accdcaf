"""ColBERT persona retrieval: index build time, single-query latency and recall, on this machine.

    python jobs/benchmarks/retrieval.py [--small 1000] [--large 10000] [--queries 500]

Corpus: distinct real texts (BeaverTails prompts and personas from ../shared/data, the bundled
sample pairs, then sentences and clauses of real model responses), each row carrying real
personas; the BeaverTails file is not redistributable, so it is not in the repository and the
benchmark stops with a message where ../shared/data is absent. See
persona_ray.retrieval.recall.corpus_rows. Two indexes are built side by side in this run (small
and large) with the default IndexConfig (MiniLM ColBERT checkpoint, nbits 2), so the build cost
per 1k prompts can be compared across sizes. Latency: single `PersonaRetriever.search`
calls (k=10, one query at a time, as Serving calls it) on the large index, after 20 warm-up
queries; queries are reworded indexed texts (words dropped, two swapped). Target: p50 <= 25 ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from latency import p50_p99

REPO = Path(__file__).resolve().parents[2]
# Real BeaverTails personas, kept beside the repository (not redistributable, so not in it).
REAL = REPO.parent / "shared" / "data" / "beavertails-test-personas.jsonl"
SAMPLE = REPO / "persona_ray" / "data" / "sample_pairs.jsonl"


def require_real_data() -> None:
    """Say plainly, before any work, that this benchmark measures on ../shared data."""
    if not REAL.is_file():
        raise SystemExit(f"this benchmark needs {REAL} (real BeaverTails personas, not redistributable, "
                         "so not in the repository); run it where ../shared/data exists, e.g. CI")
    print(f"data: {REAL}", file=sys.stderr, flush=True)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def corpus(size: int) -> list[dict]:
    from persona_ray.retrieval.recall import corpus_rows

    real, sample = read_jsonl(REAL), read_jsonl(SAMPLE)
    extra = [r["prompt"] for r in sample] + [r[f] for r in sample for f in ("chosen", "rejected")]
    extra += [r[f] for r in real for f in ("pt_dpo_response", "dpo_response")]
    rows = corpus_rows(real, extra, size)
    if len(rows) < size:
        raise SystemExit(f"only {len(rows)} distinct texts available (asked for {size})")
    return rows


def build(rows: list[dict], folder: Path) -> float:
    from persona_ray.retrieval.index import IndexConfig, run_index

    data = folder / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    started = time.perf_counter()
    run_index(IndexConfig(data=str(data), output=str(folder / "index"), force=True))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10000)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    require_real_data()

    from persona_ray.retrieval.colbert_compat import build_minilm_checkpoint
    from persona_ray.retrieval.recall import recall_at, reword
    from persona_ray.retrieval.search import PersonaRetriever

    build_minilm_checkpoint()  # built once, outside the timings
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {"small": args.small, "large": args.large}
        seconds = {}
        for name, size in sizes.items():
            folder = Path(tmp) / name
            folder.mkdir()
            seconds[name] = build(corpus(size), folder)
        rows = corpus(args.large)
        retriever = PersonaRetriever.load(str(Path(tmp) / "large" / "index"))
        step = max(1, len(rows) // args.queries)
        targets = [(reword(r["prompt"]), r["pair_id"]) for r in rows[::step][: args.queries]]
        for query, _ in targets[:20]:
            retriever.search(query, k=10)
        latencies = []
        for query, _ in targets:
            started = time.perf_counter()
            retriever.search(query, k=10)
            latencies.append((time.perf_counter() - started) * 1000)
        recall = recall_at(retriever.search, targets, ks=(1, 10))

    per_1k = {name: seconds[name] / sizes[name] * 1000 for name in sizes}
    p50, p99 = p50_p99(latencies)
    result = {
        "build_s": {n: round(s, 1) for n, s in seconds.items()},
        "build_s_per_1k": {n: round(s, 1) for n, s in per_1k.items()},
        "build_per_1k_ratio_large_over_small": round(per_1k["large"] / per_1k["small"], 2),
        "latency_ms_p50": round(p50, 1), "latency_ms_p99": round(p99, 1),
        "p50_over_target_25ms": round(p50 / 25, 2),
        "recall@1": round(recall[1], 3), "recall@10": round(recall[10], 3),
        "queries": len(targets), "index_rows": len(rows),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
