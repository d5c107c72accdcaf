"""Scale benchmark: the driver's peak memory at a large input ÷ at a small one, per stage, measured
side by side in one run, and one persona-inference resume after a kill at the large size.

    python jobs/benchmarks/scale.py [--small 20000] [--large 200000] [--index-small 1000]
                                    [--index-large 5000] [--stages augment,index,infer] [--kill-after-shards 4]

What runs (each job in its own process: the driver whose memory (PSS) is sampled twice a
second; Ray's workers and the engine are other processes and are not counted):
  infer    persona inference over N pairs, tiny self-built model on vLLM (CPU), k_shot 0 and a few
           output tokens: this measures what the job holds, not persona quality (the random model's
           personas are mostly invalid; that is expected here)
  augment  the same N pairs with two valid persona records each (written by this script, since the
           tiny model's personas are not valid sentences) joined and split
  index    ColBERT (MiniLM checkpoint) index of the training rows of an augmented folder of
           --index-small / --index-large pairs (ColBERT encoding on 2 CPU cores is ~40 s per 1,000
           prompts, so the index sizes are smaller than N; say so when quoting the numbers); the
           PLAID build's Ray task reports its own peak beside the driver's
The large persona-inference run is also the resume check: it is killed (SIGKILL to the driver and
every process under it) once `--kill-after-shards` shards are committed and run again to the end; its
driver peak is the higher of the two runs', and the output must hold every (pair_id, side) once.
The ratios are printed as `ratio <stage> driver peak large/small: PSS X, own heap (anon) Y` (target
<= 1.2): PSS is all the driver maps (its heap, libraries, Ray's object-store pages it reads), anon
its own heap alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pi_throughput import PeakMemory, make_input  # noqa: E402 - a sibling script

RESULT = "BENCH_RESULT "
REPO = Path(__file__).resolve().parents[2]


def infer_config(pairs: Path, output: Path):
    from persona_ray.inference.infer import InferConfig

    return InferConfig(pairs={"input": str(pairs)}, output=str(output), k_shot=0, shard_size=5000,
                       commit_every_s=20, progress_every_s=60,
                       engine={"model": "tiny", "guided_decoding": False,
                               "sampling": {"max_tokens": 4, "temperature": 0.0},
                               "vllm": {"batch_size": 256, "concurrency": 1, "cpu_kv_cache_gib": 2}})


def write_personas(pairs: Path, folder: Path) -> None:
    """Two valid persona records per input pair (for augment and index)."""
    from persona_ray.core.schema import PERSONA_SCHEMA
    from persona_ray.core.shards import ShardWriter

    writer = ShardWriter(str(folder / "personas"), PERSONA_SCHEMA, shard_size=20_000, commit_every_s=None)
    batch = []
    with pairs.open() as handle:
        for line in handle:
            pair_id = json.loads(line)["id"]
            for side, trait in (("chosen", "careful"), ("rejected", "hurried")):
                batch.append({"pair_id": pair_id, "side": side, "raw_text": "", "model": "scale-benchmark",
                              "persona": f"The user is {trait} and prefers answers that suit a {trait} reader.",
                              "template_version": "scale", "valid": True, "reason": "",
                              "num_input_tokens": 0, "num_output_tokens": 0})
            if len(batch) >= 20_000:
                writer.add(pa.Table.from_pylist(batch, schema=PERSONA_SCHEMA))
                batch = []
    if batch:
        writer.add(pa.Table.from_pylist(batch, schema=PERSONA_SCHEMA))
    writer.close()


def child(args) -> dict:
    """One job in this process (the measured driver)."""
    if args.child == "infer":
        from persona_ray.inference.infer import run_infer

        counts = run_infer(infer_config(Path(args.input), Path(args.output)))["counts"]
        return {k: counts[k] for k in ("valid_pairs", "persona_records", "unique_keys", "resumed_records",
                                       "written_this_run")}
    if args.child == "augment":
        from persona_ray.dataset.augment import AugmentConfig, run_augment

        cfg = AugmentConfig(pairs={"input": args.input}, personas=args.personas, output=args.output,
                            formats=["parquet"])
        return run_augment(cfg)["counts"]
    from persona_ray.retrieval.index import IndexConfig, run_index

    manifest = run_index(IndexConfig(data=args.input, output=args.output, force=True))
    # The PLAID build runs in a Ray task: its process's peak (ru_maxrss, which also counts any Ray
    # Data task that process ran before) is reported beside the driver's.
    return {"rows": manifest["rows"], "build_seconds": manifest["build_seconds"],
            "build_task_peak_rss_mib": manifest["encode"].get("build_peak_rss_mib")}


def run_child(kind: str, extra: list[str], kill_when=None) -> tuple[dict | None, dict[str, int], float]:
    """(result, the driver's peak PSS and parts in bytes (PeakMemory.peaks), seconds); with
    kill_when, the child is killed (SIGKILL to it and every process under it) as soon as kill_when() is true,
    and the result is None."""
    command = [sys.executable, __file__, "--child", kind, *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
                               start_new_session=True)
    sampler = PeakMemory(process.pid, tree=False)  # the driver alone: Ray's workers are other processes
    if kill_when is not None:
        while process.poll() is None and not kill_when():
            time.sleep(1)
        # As when the machine dies: the driver and every process it started (Ray's workers and the
        # vLLM engine are in sessions of their own, and an engine process outlives its Ray worker).
        descendants = psutil.Process(process.pid).children(recursive=True)
        os.killpg(process.pid, signal.SIGKILL)
        for child_process in descendants:
            try:
                child_process.kill()
            except psutil.Error:
                pass
        process.wait()
        sampler.stop()
        return None, sampler.peaks, time.perf_counter() - started
    out, _ = process.communicate()
    sampler.stop()
    lines = [line for line in out.splitlines() if line.startswith(RESULT)]
    if process.returncode != 0 or not lines:
        raise SystemExit(f"{kind} run failed (exit {process.returncode}); rerun it alone: {' '.join(command)}")
    return json.loads(lines[-1][len(RESULT):]), sampler.peaks, time.perf_counter() - started


def mib(peaks: dict[str, int]) -> str:
    return ", ".join(f"{part} {value / 2**20:.0f}" for part, value in peaks.items()) + " MiB"


def measure(stage: str, runs: dict[str, list[str]], kill_large_when=None) -> dict:
    """Each size's job once, the driver's peaks and seconds; with kill_large_when the large run is
    killed when it turns true and run again to the end (peaks: the higher of the two runs')."""
    out = {}
    for size, extra in runs.items():
        killed = None
        peaks = {}
        if size == "large" and kill_large_when is not None:
            _, peaks, killed_after = run_child(stage, extra, kill_when=kill_large_when)
            killed = {"driver_peaks": peaks, "seconds": round(killed_after, 1)}
            print(f"{stage} {size}: killed after {killed_after:.0f} s, driver peak {mib(peaks)}", flush=True)
        result, run_peaks, seconds = run_child(stage, extra)
        peaks = {part: max(value, peaks.get(part, 0)) for part, value in run_peaks.items()}
        out[size] = {"result": result, "driver_peaks": peaks, "seconds": round(seconds, 1), "killed_run": killed}
        print(f"{stage} {size}: driver peak {mib(run_peaks)}, {seconds:.0f} s, {json.dumps(result)}", flush=True)
    ratios = {part: out["large"]["driver_peaks"][part] / max(out["small"]["driver_peaks"][part], 1)
              for part in ("pss", "anon")}
    print(f"ratio {stage} driver peak large/small: PSS {ratios['pss']:.3f}, own heap (anon) {ratios['anon']:.3f}"
          f"  (target <= 1.2)", flush=True)
    return {**out, "ratios": ratios}


def check_once(output: Path, expected_pairs: int) -> dict:
    """Every (pair_id, side) in the persona shards exactly once, and all of them there."""
    from persona_ray.core.shards import shard_files

    table = pa.concat_tables([pq.read_table(f, columns=["pair_id", "side"])
                              for f in shard_files(str(output / "personas"))])
    keys = {(p, s) for p, s in zip(table["pair_id"].to_pylist(), table["side"].to_pylist())}
    once = table.num_rows == len(keys) == 2 * expected_pairs
    print(f"resume: {table.num_rows} records, {len(keys)} distinct, expected {2 * expected_pairs}: "
          f"every record once = {once}", flush=True)
    return {"records": table.num_rows, "distinct_keys": len(keys), "every_record_once": once}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=200_000)
    parser.add_argument("--index-small", type=int, default=1_000)
    parser.add_argument("--index-large", type=int, default=5_000)
    parser.add_argument("--stages", default="augment,index,infer")
    parser.add_argument("--kill-after-shards", type=int, default=4)
    parser.add_argument("--workdir", default=str(REPO / "outputs" / "bench-scale"))
    parser.add_argument("--child", choices=["infer", "augment", "index"])
    parser.add_argument("--input")
    parser.add_argument("--personas")
    parser.add_argument("--output")
    args = parser.parse_args()
    if args.child:
        print(RESULT + json.dumps(child(args), default=str), flush=True)
        return

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    stages = args.stages.split(",")
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sizes = {"small": args.small, "large": args.large}
    inputs = {}
    for size, n in {**sizes, "index-small": args.index_small, "index-large": args.index_large}.items():
        inputs[size] = work / f"pairs-{size}.jsonl"
        make_input(inputs[size], n)
    results: dict = {"args": vars(args)}
    if "augment" in stages or "index" in stages:
        for size in ("small", "large", "index-small", "index-large"):
            write_personas(inputs[size], work / f"personas-{size}")
        results["augment"] = measure("augment", {
            size: ["--input", str(inputs[size]), "--personas", str(work / f"personas-{size}"),
                   "--output", str(work / f"aug-{size}")] for size in sizes})
    if "index" in stages:
        for size in ("index-small", "index-large"):
            run_child("augment", ["--input", str(inputs[size]), "--personas", str(work / f"personas-{size}"),
                                  "--output", str(work / f"aug-{size}")])
        results["index"] = measure("index", {
            size: ["--input", str(work / f"aug-index-{size}"), "--output", str(work / f"index-{size}")]
            for size in ("small", "large")})
    if "infer" in stages:
        from persona_ray.core.shards import shard_files

        def committed() -> bool:
            return len(shard_files(str(work / "pi-large" / "personas"))) >= args.kill_after_shards

        results["infer"] = measure("infer", {size: ["--input", str(inputs[size]), "--output", str(work / f"pi-{size}")]
                                             for size in sizes}, kill_large_when=committed)
        results["infer"]["resume"] = check_once(work / "pi-large", args.large)
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
