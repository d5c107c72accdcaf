"""The serving app under load, a replica killed in the middle, autoscaling watched, overhead measured.

    python jobs/benchmarks/serving_load.py [--requests 1000] [--malformed 200] [--concurrency 16]
                                           [--max-tokens 64] [--kill-after 0.4] [--time-limit 1500]

Loopback only, bounded in count and time (it stops itself at --time-limit). One run:
1. The app (persona_ray/serving/app.py) on local Ray: tiny model on vLLM CPU (the plumbing, not
   answer quality), MiniLM ColBERT index over the bundled world questions with the world's
   persona sentences, API keys on, low autoscaling targets for the retriever and the ingress.
2. Load: --requests good requests at --concurrency clients, mixed chat with a given persona,
   chat with the persona retrieved, streamed chat and completions, with --malformed hostile
   ones interleaved (broken JSON, wrong types, unknown fields, over-long and invalid text, bad
   personas, a 1 MB body, no key). After --kill-after of them, the LLM replica's actor is
   killed; /healthz is polled all along, and Serve's proxy route /-/healthz beside it, from a
   process of their own (as a kubelet polls; in this one the clients' threads hold the GIL).
3. Autoscaling: replica counts of every deployment from serve.status() each second, during the
   load and after it until they are back at their minimum (or 180 s).
4. Overhead, after the load, sequential and interleaved on the same prompts: p50 of
   /v1/chat/completions through the app ÷ p50 of the same generation asked of the engine's
   deployment directly (its Serve handle, the same model input), with a given persona and with a
   retrieved one.
Prints counts of every status per kind (a 5xx other than 503 is a failure; so is a good request
refused or a malformed one accepted), the 503 gap and the longest wait in it, p50 / p99
latency, requests/s, /healthz p50 / p99 polled four times a second during the load and from the
kill until ready again (a readiness probe's view; target p99 <= 200 ms) beside the proxy's own
/-/healthz (no replica answers it: the proxy's share of a slow poll) and the replica timeline;
then the overhead ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import secrets
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from latency import p50_p99

APP, PORT = "persona", 8771
STREAM_CUT = 299  # a 200 stream that ended without [DONE]
MAX_TRIES, RETRY_WAIT_S = 60, 2.0  # the app's Retry-After is 2 s
MALFORMED = [  # (what, body bytes or dict, send the key?)
    ("broken-json", b'{"model": "PT", "messages": [', True),
    ("array-body", b"[1, 2]", True),
    ("wrong-type", {"model": "PT", "prompt": 42}, True),
    ("string-max-tokens", {"model": "PT", "prompt": "hi", "max_tokens": "8"}, True),
    ("unknown-field", {"model": "PT", "prompt": "hi", "best_of": 2}, True),
    ("too-many-tokens", {"model": "PT", "prompt": "x" * 4100}, True),
    ("lone-surrogate", b'{"model": "PT", "prompt": "a \\ud800 b"}', True),
    ("nul-in-prompt", {"model": "PT", "prompt": "a\u0000b"}, True),
    ("protected-persona", {"model": "PT", "prompt": "hi", "persona": "The user is a devout Catholic and prefers "
                                                                      "prayers."}, True),
    ("bidi-persona", {"model": "PT", "prompt": "hi", "persona": "The user is calm\u202e and prefers detail."}, True),
    ("unknown-model", {"model": "nope", "prompt": "hi"}, True),
    ("one-megabyte", b'{"model": "PT", "prompt": "' + b"x" * (1 << 20) + b'"}', True),
    ("no-key", {"model": "PT", "prompt": "hi"}, False),
]


def world_rows() -> list[dict]:
    """The bundled questions, each with one of the world's persona sentences as its training persona."""
    from persona_ray.world.build import world_prompts
    from persona_ray.world.spec import DEFAULT_TYPES

    return [{"id": f"q{i}", "prompt": p, "chosen_persona": DEFAULT_TYPES[i % 4].persona,
             "rejected_persona": DEFAULT_TYPES[(i + 1) % 4].persona} for i, p in enumerate(world_prompts())]


def start_app(tmp: Path, rows: list[dict], key: str, max_tokens: int) -> str:
    from ray import serve

    from persona_ray.core.ray_runtime import ensure_ray
    from persona_ray.retrieval.index import IndexConfig, run_index
    from persona_ray.serving.app import build_app

    (tmp / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_index(IndexConfig(data=str(tmp / "rows.jsonl"), output=str(tmp / "index")))
    (tmp / "keys").write_text(key + "\n")
    ensure_ray()
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    fast = {"upscale_delay_s": 2, "downscale_delay_s": 10}
    serve.run(build_app({
        "index": str(tmp / "index"), "api_keys_file": str(tmp / "keys"), "model_id": "PT",
        "engine": {"model": "tiny", "sampling": {"max_tokens": max_tokens, "stop": [], "temperature": 0.0},
                   "vllm": {"max_model_len": 1024}},
        "request_timeout_s": 30, "retry_after_s": 2, "retriever_cpus": 0.5,
        "retriever_scaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1, **fast},
        "ingress_scaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2, **fast}}),
        name=APP, route_prefix="/")
    return f"http://127.0.0.1:{PORT}"


def replica_counts() -> dict[str, int]:
    from ray import serve

    deployments = serve.status().applications[APP].deployments
    return {name: d.replica_states.get("RUNNING", 0) for name, d in deployments.items()}


def kill_llm_replica() -> str:
    import ray

    (replica,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith("SERVE_REPLICA") and "TailoredLLM0" in a["name"]]
    ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=True)
    return replica


def good_request(i: int, rows: list[dict], max_tokens: int) -> tuple[str, str, dict]:
    """(kind, path, body) for the i-th good request."""
    row = rows[i % len(rows)]
    chat = {"model": "PT", "max_tokens": max_tokens, "messages": [{"role": "user", "content": row["prompt"]}]}
    kind = ["given", "given", "retrieved", "retrieved", "stream", "completion"][i % 6]
    if kind == "given":
        return kind, "/v1/chat/completions", {**chat, "persona": row["rejected_persona"]}
    if kind == "retrieved":
        return kind, "/v1/chat/completions", chat
    if kind == "stream":
        return kind, "/v1/chat/completions", {**chat, "stream": True}
    return kind, "/v1/completions", {"model": "PT", "prompt": row["prompt"], "max_tokens": max_tokens,
                                     "persona": row["chosen_persona"]}


def send(client: httpx.Client, url: str, path: str, body, key: str | None) -> tuple[int, float]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    started = time.perf_counter()
    if isinstance(body, bytes):
        reply = client.post(url + path, content=body, headers={**headers, "content-type": "application/json"})
    else:
        reply = client.post(url + path, json=body, headers=headers)
    streamed = isinstance(body, dict) and body.get("stream")
    if reply.status_code == 200 and streamed and not reply.text.rstrip().endswith("data: [DONE]"):
        return STREAM_CUT, (time.perf_counter() - started) * 1000  # counted apart: a stream that broke off
    return reply.status_code, (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--malformed", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--kill-after", type=float, default=0.4, help="share of requests done before the kill")
    parser.add_argument("--overhead-requests", type=int, default=30)
    parser.add_argument("--time-limit", type=float, default=1500, help="seconds; the load stops itself after it")
    args = parser.parse_args()
    rng, key, rows = random.Random(0), "pr-" + secrets.token_hex(16), world_rows()

    with tempfile.TemporaryDirectory() as tmp:
        url = start_app(Path(tmp), rows, key, args.max_tokens)
        deadline = time.monotonic() + args.time_limit
        jobs = [("good",) + good_request(i, rows, args.max_tokens) + (key,) for i in range(args.requests)]
        jobs += [("malformed", what, "/v1/completions", body, key if keyed else None)
                 for what, body, keyed in (MALFORMED[i % len(MALFORMED)] for i in range(args.malformed))]
        rng.shuffle(jobs)
        results, events, timeline, done = [], {}, [], threading.Event()
        kill_at = int(args.kill_after * len(jobs))

        def watch() -> None:  # replica counts and readiness, once a second
            with httpx.Client(timeout=10) as client:
                while not done.is_set():
                    try:
                        health = client.get(url + "/healthz").status_code
                    except httpx.HTTPError:
                        health = -1
                    timeline.append((time.monotonic(), replica_counts(), health))
                    time.sleep(1)

        # /healthz and Serve's proxy route /-/healthz (no replica answers it) polled four times a second
        # from a process of their own, as a kubelet polls: not from this one, whose 16 client threads and
        # Ray driver would make every poll wait for the GIL
        stop_polls, polled = multiprocessing.get_context("spawn").Event(), Path(tmp) / "polls.json"
        poller = multiprocessing.get_context("spawn").Process(target=poll_health, args=(url, stop_polls, polled))

        def run(job_index: int, job: tuple) -> None:
            if time.monotonic() > deadline:
                return
            if job_index == kill_at:
                events["killed"] = (time.monotonic(), kill_llm_replica())
            group, kind, path, body, job_key = job
            statuses = []
            with httpx.Client(timeout=120) as client:
                for _ in range(MAX_TRIES):  # a good client waits Retry-After and tries again
                    status, ms = send(client, url, path, body, job_key)
                    statuses.append((status, ms))
                    if status != 503 or group != "good" or time.monotonic() > deadline:
                        break
                    time.sleep(RETRY_WAIT_S)
            results.append({"group": group, "kind": kind, "status": status, "ms": ms, "tries": statuses,
                            "at": time.monotonic()})

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        poller.start()
        started = time.monotonic()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(run, range(len(jobs)), jobs))
        load_s = time.monotonic() - started
        events["load"] = (started, started + load_s)
        settle = time.monotonic() + 180
        while time.monotonic() < settle and any(n > 1 for n in replica_counts().values()):
            time.sleep(2)
        done.set()
        stop_polls.set()
        watcher.join()
        poller.join()
        polls, proxy_polls = json.loads(polled.read_text())
        report(results, events, timeline, polls, proxy_polls, load_s, args)  # printed before anything else can fail
        overhead = asyncio.run(measure_overhead(url, key, rows, args))
        print(json.dumps(overhead, indent=2))
        from ray import serve

        serve.shutdown()


def poll_health(url: str, stop, into: Path) -> None:
    """[/healthz polls, /-/healthz polls], each (when, status, ms), written to `into` when `stop` is set."""
    polls: dict[str, list] = {"/healthz": [], "/-/healthz": []}
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            for path, done in polls.items():
                started = time.perf_counter()
                try:
                    status = client.get(url + path).status_code
                except httpx.HTTPError:
                    status = -1
                done.append((time.monotonic(), status, (time.perf_counter() - started) * 1000))
            time.sleep(0.25)
    into.write_text(json.dumps(list(polls.values())))


async def measure_overhead(url: str, key: str, rows: list[dict], args) -> dict:
    """p50 through the app ÷ p50 of the engine deployment asked directly with the same input (in one
    event loop: a Serve handle may be bound to the loop it first ran in)."""
    from ray import serve

    from persona_ray.tailoring.templates import inference_input

    llm = serve.get_deployment_handle("TailoredLLM0", APP)
    sampling = {"max_tokens": args.max_tokens, "temperature": 0.0, "top_p": 1.0, "stop": []}
    times = {"app_given": [], "app_retrieved": [], "engine_given": [], "engine_retrieved": []}
    async with httpx.AsyncClient(timeout=120, headers={"authorization": f"Bearer {key}"}) as client:
        for row in rows[: args.overhead_requests]:
            chat = {"model": "PT", "max_tokens": args.max_tokens, "messages": [{"role": "user", "content": row["prompt"]}]}
            for source, body in (("given", {**chat, "persona": row["rejected_persona"]}), ("retrieved", chat)):
                started = time.perf_counter()
                reply = await client.post(url + "/v1/chat/completions", json=body)
                times[f"app_{source}"].append((time.perf_counter() - started) * 1000)
                reply.raise_for_status()
                text = inference_input(row["prompt"], reply.json()["persona"], persona_template=True)
                started = time.perf_counter()
                await llm.generate.remote(text, sampling, "PT")
                times[f"engine_{source}"].append((time.perf_counter() - started) * 1000)
    p50 = {name: p50_p99(values)[0] for name, values in times.items()}
    return {**{f"{name}_p50_ms": round(v, 1) for name, v in p50.items()},
            "app_over_engine_given": round(p50["app_given"] / p50["engine_given"], 2),
            "app_over_engine_retrieved": round(p50["app_retrieved"] / p50["engine_retrieved"], 2)}


def outage(polls: list, killed_at: float | None) -> tuple[float | None, float | None]:
    """(the first /healthz poll after the kill that was not 200, the first 200 after the last one
    that was not): each ingress replica tells readiness from what it has seen, so for a second or
    two after the kill one may still say ready while another says not."""
    after = [(t, status) for t, status, _ in polls if killed_at and t > killed_at]
    down = next((t for t, status in after if status != 200), None)
    last_down = max((t for t, status in after if status != 200), default=None)
    back = next((t for t, status in after if last_down and t > last_down and status == 200), None)
    return down, back


def health_latency(polls: list, events: dict) -> dict:
    """/healthz p50 / p99 (ms) during the load with every replica up, and from the kill until ready
    again; how long /healthz took to say not ready after the kill, and how long it said so."""
    load_from, load_to = events["load"]
    killed_at = events.get("killed", (None, None))[0]
    down, back = outage(polls, killed_at)

    def in_kill(t: float) -> bool:
        return bool(killed_at) and killed_at <= t <= (back or load_to)

    kill = [ms for t, _, ms in polls if in_kill(t)]
    load = [ms for t, _, ms in polls if load_from <= t <= load_to and not in_kill(t)]
    out = {"healthz_not_ready_after_kill_s": round(down - killed_at, 1) if down else None,
           "not_ready_s": round(back - down, 1) if back and down else None}
    for name, values in (("load", load), ("kill", kill)):
        p50, p99 = p50_p99(values) if values else (float("nan"), float("nan"))
        out.update({f"healthz_{name}_polls": len(values), f"healthz_{name}_p50_ms": round(p50, 1),
                    f"healthz_{name}_p99_ms": round(p99, 1)})
    out["healthz_over_2s"] = sum(ms > 2000 for _, _, ms in polls)
    return out


def proxy_latency(proxy_polls: list, events: dict) -> dict:
    """Serve's proxy health route (answered by the proxy alone) during the load with every replica
    up: p50 / p99 (ms), in the same windows as /healthz's. Beside /healthz's, it tells the proxy's
    share of a slow poll from the ingress's."""
    return {f"proxy_{k}": v for k, v in health_latency(proxy_polls, events).items() if k.startswith("healthz_load_")}


def report(results: list[dict], events: dict, timeline: list, polls: list, proxy_polls: list, load_s: float,
           args) -> None:
    counts = Counter((r["group"], r["kind"], r["status"]) for r in results)
    good = [r for r in results if r["group"] == "good"]
    bad = [r for r in results if r["group"] == "malformed"]
    gap = [r for r in good if any(status == 503 for status, _ in r["tries"])]  # met the replica loss
    ok = [r["ms"] for r in good if r["status"] == 200]
    p50, p99 = p50_p99(ok) if ok else (float("nan"), float("nan"))
    peak = {}
    for _, replicas, _ in timeline:
        for name, n in replicas.items():
            peak[name] = max(peak.get(name, 0), n)
    summary = {
        "requests_sent": len(results), "good": len(good), "malformed": len(bad),
        "good_200": sum(r["status"] == 200 for r in good), "good_gave_up_503": sum(r["status"] == 503 for r in good),
        "good_that_met_503": len(gap), "responses_503": sum(status == 503 for r in good for status, _ in r["tries"]),
        "most_tries": max((len(r["tries"]) for r in good), default=0),
        "good_other": sorted({r["status"] for r in good} - {200, 503}),
        "malformed_4xx": sum(400 <= r["status"] < 500 for r in bad),
        "malformed_other": sorted({r["status"] for r in bad if not 400 <= r["status"] < 500}),
        "any_5xx_but_503": sum(r["status"] >= 500 and r["status"] != 503 for r in results),
        "killed": events.get("killed", (None, None))[1],
        "longest_wait_for_a_503_ms": round(max((ms for r in good for status, ms in r["tries"] if status == 503),
                                                default=0), 1),
        "p50_ms": round(p50, 1), "p99_ms": round(p99, 1), "requests_per_s": round(len(results) / load_s, 2),
        "load_s": round(load_s, 1), "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "peak_replicas": peak, "final_replicas": timeline[-1][1] if timeline else None,
        **health_latency(polls, events), **proxy_latency(proxy_polls, events),
    }
    print("status counts (group, kind, status):")
    for (group, kind, status), n in sorted(counts.items()):
        print(f"  {group:9s} {kind:18s} {status}: {n}")
    start = timeline[0][0] if timeline else 0
    print("replicas (s, RUNNING per deployment, /healthz):")
    for t, replicas, health in timeline[:: max(1, len(timeline) // 40)]:
        print(f"  {t - start:6.0f}  {replicas}  {health}")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
