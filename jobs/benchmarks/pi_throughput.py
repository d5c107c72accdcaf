"""Persona-inference throughput benchmark: three ratios, measured side by side in one run.

    python jobs/benchmarks/pi_throughput.py [--pairs 2000] [--scale 10]

1. PI pipeline pairs/s  ÷  bare vllm.LLM.generate pairs/s       (same prompts, engine, sampling)
2. bare generate with prefix caching on  ÷  off                 (the k-shot prefix is shared)
3. peak memory of the pipeline at `scale`× the input  ÷  at 1×  (streaming keeps it flat)

Throughput is steady state: engine start-up is excluded on both sides. The bare engine is
warmed up before timing. The pipeline runs at 1x and at `scale`x the input (the same two runs
that give the memory ratio) and its rate is the marginal one, (scale-1)·N pairs over the
difference of the two generation times, so start-up and fixed costs cancel out.
Each measurement runs in its own process; memory is the peak summed PSS of that process and
all of its descendants (driver, Ray, workers, engine), sampled twice a second.
Uses the tiny self-built model on CPU unless --model is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULT = "BENCH_RESULT "
REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "persona_ray" / "data" / "sample_pairs.jsonl"


def make_input(path: Path, pairs: int) -> None:
    """`pairs` distinct pairs: the sample pairs with numbered prompt variants."""
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    with path.open("w") as handle:
        for i in range(pairs):
            row = dict(rows[i % len(rows)])
            row["id"] = f"bench-{i:07d}"
            row["prompt"] = f"{row['prompt']} (case {i})"
            handle.write(json.dumps(row) + "\n")


def child_bare(args) -> dict:
    """Bare vLLM: build the same PI prompts and time LLM.generate after a warm-up."""
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from persona_ray.inference.parse import guided_regex
    from persona_ray.inference.prompt import build_pi_prompt
    from persona_ray.core.models import resolve_model

    rows = [json.loads(line) for line in Path(args.input).read_text().splitlines()]
    prompts = [build_pi_prompt(r["prompt"], r["chosen"], r["rejected"], side, r["domain"], args.k_shot)
               for r in rows for side in ("chosen", "rejected")]
    llm = LLM(model=resolve_model(args.model), max_model_len=4096, enable_prefix_caching=bool(args.prefix_caching),
              enforce_eager=True, dtype="auto", seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, stop=["\n"], seed=0,
                            structured_outputs=StructuredOutputsParams(regex=guided_regex(60, 100)))
    llm.generate(prompts[:32], params, use_tqdm=False)  # warm-up: first compilation of the grammar etc.
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return {"pairs_per_s": len(rows) / elapsed, "seconds": elapsed,
            "output_tokens": sum(len(o.outputs[0].token_ids) for o in outputs)}


def child_pipeline(args) -> dict:
    from persona_ray.inference.infer import InferConfig, run_infer

    cfg = InferConfig(
        pairs={"input": args.input}, output=args.output, k_shot=args.k_shot,
        max_attribute_chars=60, max_preference_chars=100, shard_size=2000,
        engine={"model": args.model, "guided_decoding": True,
                "sampling": {"max_tokens": args.max_tokens, "temperature": 0.0},
                "vllm": {"batch_size": 64, "concurrency": 1, "enable_prefix_caching": True, "cpu_kv_cache_gib": 2,
                         "cpus_per_engine": args.cpus_per_engine}},
    )
    manifest = run_infer(cfg)
    return {"pairs": manifest["counts"]["valid_pairs"], "generate_s": manifest["timings_s"]["generate"],
            "manifest": manifest}


class PeakMemory:
    """Peak summed PSS of a process tree (or of the one process: tree=False), sampled in a
    background thread; `peaks` also holds the peak of each part of it (Linux smaps_rollup):
    `anon` (the process's own heap), `file` (mapped files: libraries, memory-mapped data) and
    `shmem` (shared memory, where Ray's object store lives: pages of objects a process reads
    are mapped into it, and counted in its PSS, while those objects live)."""

    PARTS = {"Pss:": "pss", "Pss_Anon:": "anon", "Pss_File:": "file", "Pss_Shmem:": "shmem"}

    def __init__(self, pid: int, every_s: float = 0.5, tree: bool = True):
        import psutil

        self.root, self.every_s, self._stop = psutil.Process(pid), every_s, threading.Event()
        self.tree = tree
        self.peaks = dict.fromkeys(self.PARTS.values(), 0)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def peak(self) -> int:
        return self.peaks["pss"]

    @classmethod
    def parts(cls, pid: int) -> dict[str, int]:
        """The process's PSS and its parts, in bytes (zeros for a process gone)."""
        found = dict.fromkeys(cls.PARTS.values(), 0)
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                name, _, rest = line.partition(" ")
                if name in cls.PARTS:
                    found[cls.PARTS[name]] = int(rest.split()[0]) * 1024
        except (OSError, ValueError):
            pass
        return found

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                processes = [self.root, *(self.root.children(recursive=True) if self.tree else [])]
            except psutil.Error:
                break
            total = dict.fromkeys(self.PARTS.values(), 0)
            for process in processes:
                for part, value in self.parts(process.pid).items():
                    total[part] += value
            self.peaks = {part: max(self.peaks[part], total[part]) for part in total}
            self._stop.wait(self.every_s)

    def stop(self) -> int:
        self._stop.set()
        self.thread.join()
        return self.peak


def run_child(kind: str, extra: list[str]) -> tuple[dict, int]:
    command = [sys.executable, __file__, "--child", kind, *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    sampler = PeakMemory(process.pid)
    out, _ = process.communicate()
    peak = sampler.stop()
    lines = [line for line in out.splitlines() if line.startswith(RESULT)]
    if process.returncode != 0 or not lines:
        raise SystemExit(f"{kind} run failed (exit {process.returncode}); rerun it alone: {' '.join(command)}")
    return json.loads(lines[-1][len(RESULT):]), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--k-shot", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--cpus-per-engine", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("--workdir", default=str(REPO / "outputs" / "bench"))
    parser.add_argument("--child", choices=["bare", "pipeline"])
    parser.add_argument("--input")
    parser.add_argument("--output")
    parser.add_argument("--prefix-caching", type=int, default=1)
    args = parser.parse_args()

    if args.child:
        result = child_bare(args) if args.child == "bare" else child_pipeline(args)
        print(RESULT + json.dumps(result, default=str), flush=True)
        return

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    work = Path(args.workdir)
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    one, many = work / "pairs-1x.jsonl", work / f"pairs-{args.scale}x.jsonl"
    make_input(one, args.pairs)
    make_input(many, args.pairs * args.scale)
    common = ["--model", args.model, "--k-shot", str(args.k_shot), "--max-tokens", str(args.max_tokens)]

    bare_on, _ = run_child("bare", [*common, "--input", str(one), "--prefix-caching", "1"])
    print(f"bare vLLM, prefix caching on : {bare_on['pairs_per_s']:.2f} pairs/s", flush=True)
    bare_off, _ = run_child("bare", [*common, "--input", str(one), "--prefix-caching", "0"])
    print(f"bare vLLM, prefix caching off: {bare_off['pairs_per_s']:.2f} pairs/s", flush=True)
    pipe = ["--cpus-per-engine", str(args.cpus_per_engine)]
    small, small_peak = run_child("pipeline", [*common, *pipe, "--input", str(one), "--output", str(work / "out-1x")])
    print(f"PI pipeline, {small['pairs']} pairs : {small['generate_s']:.1f} s generating, "
          f"peak {small_peak / 2**30:.2f} GiB", flush=True)
    large, large_peak = run_child("pipeline", [*common, *pipe, "--input", str(many), "--output", str(work / "out-Nx")])
    print(f"PI pipeline, {large['pairs']} pairs: {large['generate_s']:.1f} s generating, "
          f"peak {large_peak / 2**30:.2f} GiB", flush=True)
    pipeline_rate = (large["pairs"] - small["pairs"]) / (large["generate_s"] - small["generate_s"])
    print(f"PI pipeline, steady state      : {pipeline_rate:.2f} pairs/s", flush=True)

    ratios = {
        "pipeline_vs_bare_generate": pipeline_rate / bare_on["pairs_per_s"],
        "prefix_caching_on_vs_off": bare_on["pairs_per_s"] / bare_off["pairs_per_s"],
        f"peak_memory_{args.scale}x_vs_1x": large_peak / small_peak,
    }
    print(f"ratio pipeline / bare generate   : {ratios['pipeline_vs_bare_generate']:.3f}  (target >= 0.9)")
    print(f"ratio prefix caching on / off    : {ratios['prefix_caching_on_vs_off']:.3f}  (target >= 1.5)")
    print(f"ratio peak memory {args.scale}x / 1x       : {ratios[f'peak_memory_{args.scale}x_vs_1x']:.3f}  "
          f"(target <= 1.3)")
    (work / "results.json").write_text(json.dumps({"args": vars(args), "ratios": ratios, "bare_on": bare_on, "pipeline_rate": pipeline_rate,
                                                   "bare_off": bare_off, "peaks_bytes": [small_peak, large_peak]},
                                                  indent=2, default=str))


if __name__ == "__main__":
    main()
