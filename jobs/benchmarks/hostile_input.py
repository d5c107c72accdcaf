"""Hostile input through persona inference: build the mixed file, run PI, print the quarantine table.

    python jobs/benchmarks/hostile_input.py [--workdir outputs/hostile] [--model tiny]

The file is the bundled sample with one row of every hostile kind planted among the good ones
(persona_ray/testing/hostile.py: invalid UTF-8, NUL and BEL characters, a missing prompt in flat
format, null / int fields, identical responses, broken JSON, a JSON array, a prompt too long for
the model, a reused id) plus good rows in awkward shapes (CRLF, U+2028 inside a string). It prints
one line per quarantined row (id, reason, the start of the raw line), then the ratio of good rows
kept: it must be 1.000, and every planted row must be in the table exactly once.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=str(REPO / "outputs" / "hostile"))
    parser.add_argument("--model", default="tiny")
    args = parser.parse_args()

    from persona_ray.core import storage
    from persona_ray.core.shards import read_shards
    from persona_ray.inference.infer import InferConfig, run_infer
    from persona_ray.testing.hostile import HOSTILE, good_ids, hostile_file_bytes

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    source = work / "hostile.jsonl"
    source.write_bytes(hostile_file_bytes())
    cfg = InferConfig(pairs={"input": str(source)}, output=str(work / "out"), max_attribute_chars=30,
                      max_preference_chars=50, engine={"model": args.model, "sampling": {"max_tokens": 96}})
    manifest = run_infer(cfg)

    quarantine = read_shards(storage.join(cfg.output, "quarantine")).to_pylist()
    print(f"\n{len(quarantine)} rows quarantined (planted: {len(HOSTILE)})")
    print(f"{'row id':<26} {'reason':<78} raw")
    for row in sorted(quarantine, key=lambda r: r["reason"]):
        print(f"{row['row_id'][:26]:<26} {row['reason'][:78]:<78} {row['raw'][:40]!r}")
    planted_found = sum(1 for _, row_id, reason in HOSTILE
                        if sum(reason in q["reason"] and row_id in (None, q["row_id"]) for q in quarantine) == 1)
    kept = {r["pair_id"] for r in read_shards(storage.join(cfg.output, "personas"), columns=["pair_id"]).to_pylist()}
    print(f"planted rows quarantined exactly once: {planted_found}/{len(HOSTILE)}")
    print(f"ratio good pairs kept / good pairs: {len(kept & good_ids()) / len(good_ids()):.3f} "
          f"({manifest['counts']['valid_pairs']} valid pairs)")


if __name__ == "__main__":
    main()
