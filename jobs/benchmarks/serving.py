"""Serving latency: persona given vs persona retrieved, through the Ray Serve app over HTTP.

    python jobs/benchmarks/serving.py [--rows 499] [--requests 100] [--concurrency 8] [--max-tokens 32]

One run, side by side on one warm app (tiny model on vLLM CPU, MiniLM ColBERT index over the
BeaverTails prompts of ../shared/data): the same prompts are sent once with a persona and once
without (so the ingress first asks the retriever). Prints p50/p99 latency of each, their ratio
(the cost of retrieval in a request), and requests/s with `--concurrency` clients.
The BeaverTails file is not redistributable, so it is not in the repository: the benchmark stops
with a message where ../shared/data is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from latency import p50_p99

REPO = Path(__file__).resolve().parents[2]
# Real BeaverTails personas, kept beside the repository (not redistributable, so not in it).
REAL = REPO.parent / "shared" / "data" / "beavertails-test-personas.jsonl"


def require_real_data() -> None:
    """Say plainly, before any work, that this benchmark measures on ../shared data."""
    if not REAL.is_file():
        raise SystemExit(f"this benchmark needs {REAL} (real BeaverTails personas, not redistributable, "
                         "so not in the repository); run it where ../shared/data exists, e.g. CI")
    print(f"data: {REAL}", file=sys.stderr, flush=True)


def timed(url: str, body: dict) -> float:
    started = time.perf_counter()
    reply = httpx.post(f"{url}/v1/tailor", json=body, timeout=300)
    reply.raise_for_status()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=499)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    require_real_data()

    from ray import serve

    from persona_ray.retrieval.index import IndexConfig, run_index
    from persona_ray.core.ray_runtime import ensure_ray
    from persona_ray.serving.app import build_app

    rows = [json.loads(line) for line in REAL.read_text().splitlines() if line.strip()][: args.rows]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        run_index(IndexConfig(data=str(data), output=f"{tmp}/index"))
        ensure_ray()
        serve.start(http_options={"host": "127.0.0.1", "port": 8765})
        serve.run(build_app({"index": f"{tmp}/index",
                             "engine": {"model": "tiny", "sampling": {"max_tokens": args.max_tokens, "stop": [],
                                                                      "temperature": 0.0}}}),
                  name="persona", route_prefix="/")
        url = "http://127.0.0.1:8765"
        picks = [rows[i % len(rows)] for i in range(args.requests)]
        for row in picks[:10]:  # warm-up
            timed(url, {"prompt": row["prompt"]})
        given, retrieved = [], []
        for row in picks:  # interleaved, so drift on this shared machine hits both sides alike
            given.append(timed(url, {"prompt": row["prompt"], "persona": row["chosen_persona"]}))
            retrieved.append(timed(url, {"prompt": row["prompt"]}))
        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(lambda r: timed(url, {"prompt": r["prompt"]}), picks))
        rate = len(picks) / (time.perf_counter() - started)
        serve.shutdown()

    (given_p50, given_p99), (retrieved_p50, retrieved_p99) = p50_p99(given), p50_p99(retrieved)
    result = {
        "given_ms_p50": round(given_p50, 1), "given_ms_p99": round(given_p99, 1),
        "retrieved_ms_p50": round(retrieved_p50, 1), "retrieved_ms_p99": round(retrieved_p99, 1),
        "retrieved_over_given_p50": round(retrieved_p50 / given_p50, 2),
        f"requests_per_s_at_{args.concurrency}_clients": round(rate, 2),
        "requests": args.requests, "index_rows": len(rows), "max_tokens": args.max_tokens,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
