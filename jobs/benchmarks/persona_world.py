"""The persona world with SmolLM2: does persona tailoring serve minority users where plain DPO fails?

    python jobs/benchmarks/persona_world.py [--config cluster/jobs/world.yaml] [--output DIR] [--only STAGE]

Runs the whole world experiment (persona_ray/world/experiment.py; sizes and why in the config's
header) and prints, side by side from this one run:
  - style compliance of generated answers, PT-DPO minus plain DPO, majority and pooled minority,
    in points with a 95 % CI over test prompts (target: minority >= +25 with the CI above 0,
    majority no worse than -5);
  - preference accuracy (implicit reward) per persona type for every model (target >= 0.8);
  - what inferred personas lose against gold ones (PT-DPO gold minus PT-DPO inferred);
  - PI accuracy against the truth, and how often the LLM judge agrees with the style program;
  - seconds per stage.
A rerun resumes: finished stages are skipped (delete the output folder to start over).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _points(gap: dict | None) -> str:
    if not gap or gap.get("diff") is None:
        return "n/a"
    return f"{100 * gap['diff']:+.1f} [{100 * gap['lo']:+.1f}, {100 * gap['hi']:+.1f}] (n={gap['n_rows']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "cluster" / "jobs" / "world.yaml"))
    parser.add_argument("--output", help="override the config's output folder")
    parser.add_argument("--only", help="run (again) just this stage")
    args = parser.parse_args()

    from persona_ray.core.settings import load_config
    from persona_ray.world.experiment import WorldConfig, run_world

    cfg = load_config(WorldConfig, args.config, {"output": args.output} if args.output else {})
    started = time.time()
    stages = run_world(cfg, only=args.only)
    results = json.loads((Path(cfg.output) / "report" / "results.json").read_text())
    majority, minority = cfg.types[0].name, "minority"

    print(f"\npersona world: base {cfg.model}, seed {cfg.seed}, {time.time() - started:.0f} s this run")
    build = stages.get("build", {})
    print(f"prompts kept {build.get('prompts_kept')}/{build.get('prompts')}, prompts per split "
          f"{build.get('prompts_by_split')}, pairs {build.get('pairs')}")
    for gap, groups in results.get("gaps", {}).items():
        print(f"compliance {gap:>24}: majority {_points(groups.get(majority))}   minority {_points(groups.get(minority))}")
    for label, rates in (results.get("preference_accuracy") or {}).items():
        print(f"preference accuracy {label:>16}: " + "  ".join(f"{k} {v:.3f}" for k, v in rates.items()))
    for label, rates in (results.get("compliance") or {}).items():
        print(f"compliance {label:>25}: " + "  ".join(f"{k} {v['rate']:.3f}" for k, v in rates.items()))
    pi = stages.get("infer", {}).get("pi_accuracy_vs_truth")
    if pi:
        print("PI accuracy vs truth: " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in pi.items()))
    agreement = stages.get("judge", {}).get("judge_vs_style_program")
    if agreement:
        print(f"judge vs style program: {agreement}")
    print("seconds per stage: " + ", ".join(f"{s} {r.get('seconds')}" for s, r in stages.items()))
    print(f"report: {Path(cfg.output) / 'report' / 'report.md'}")


if __name__ == "__main__":
    main()
