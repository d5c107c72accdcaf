"""The persona world with SmolLM2: does persona tailoring serve minority users where plain DPO fails?

    python jobs/benchmarks/persona_world.py [--config cluster/jobs/world.yaml] [--output DIR] [--only STAGE]
                                            [--pi-student SHARE [--pi-student-dpo STEPS]]
                                            [--no-judge]

Runs the whole world experiment (persona_ray/world/experiment.py; sizes and why in the config's
header) and prints, side by side from this one run:
  - style compliance of generated answers, PT-DPO minus plain DPO, majority and pooled minority,
    in points with a 95 % CI over test prompts (target: minority >= +25 with the CI above 0,
    majority no worse than -5);
  - preference accuracy (implicit reward) per persona type for every model (target >= 0.8);
  - what inferred personas lose against gold ones (PT-DPO gold minus PT-DPO inferred);
  - PI accuracy against the truth, and how often the LLM judge agrees with the style program;
  - seconds per stage.
With --pi-student the inferred personas come from a SmolLM2 PI student (inference/student.py)
taught the gold personas of SHARE of the distinct training pairs (STUDENT below: the settings of
the PI-student benchmark's run 2, jobs/benchmarks/README.md), instead of 2-shot PI on every pair.
A rerun resumes: finished stages are skipped (delete the output folder to start over).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The student of jobs/benchmarks/pi_student_world.py's run 2: LoRA on every linear layer, 120 steps at
# 5e-4, zero-shot greedy PI (the world trains PT on the chosen persona, which contrast barely moves).
STUDENT = {"train": {"max_steps": 120, "learning_rate": 5e-4, "per_device_batch_size": 4, "cpus_per_worker": 2,
                     "bf16": "auto", "save_steps": 120, "logging_steps": 10,
                     "lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"]}}}
# --pi-student-dpo STEPS: DPO from that student, each side's persona beating the other side's
# (tailoring/pi_student.py). Set before the run; compare settings on the validation numbers.
STUDENT_DPO = {"learning_rate": 2e-4, "beta": 0.1, "per_device_batch_size": 4, "cpus_per_worker": 2, "bf16": "auto",
               "logging_steps": 4, "lora": STUDENT["train"]["lora"]}


def _points(gap: dict | None) -> str:
    if not gap or gap.get("diff") is None:
        return "n/a"
    return f"{100 * gap['diff']:+.1f} [{100 * gap['lo']:+.1f}, {100 * gap['hi']:+.1f}] (n={gap['n_rows']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "cluster" / "jobs" / "world.yaml"))
    parser.add_argument("--output", help="override the config's output folder")
    parser.add_argument("--only", help="run (again) just this stage")
    parser.add_argument("--pi-student", type=float, metavar="SHARE",
                        help="infer personas with a PI student taught this share of the training pairs")
    parser.add_argument("--pi-student-dpo", type=int, metavar="STEPS",
                        help="with --pi-student: DPO from the SFT student for STEPS steps (STUDENT_DPO)")
    parser.add_argument("--no-judge", action="store_true",
                        help="skip the LLM judge (compliance comes from the style program either way)")
    args = parser.parse_args()

    from persona_ray.core.settings import load_config
    from persona_ray.world.experiment import WorldConfig, run_world

    overrides = {"output": args.output} if args.output else {}
    if args.pi_student:
        overrides["pi_student"] = {**STUDENT, "share": args.pi_student}
        if args.pi_student_dpo:
            overrides["pi_student"]["dpo"] = {**STUDENT_DPO, "max_steps": args.pi_student_dpo,
                                              "save_steps": args.pi_student_dpo}
    cfg = load_config(WorldConfig, args.config, overrides)
    if args.no_judge:
        cfg = cfg.model_copy(update={"judge": None})
    started = time.time()
    stages = run_world(cfg, only=args.only)
    found = Path(cfg.output) / "report" / "results.json"
    results = json.loads(found.read_text()) if found.exists() else {}  # none yet after --only build / infer
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
    for key in ("pi_accuracy_vs_truth", "pi_accuracy_val", "pi_accuracy_test"):
        pi = stages.get("infer", {}).get(key)
        if pi:
            print(f"{key}: " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in pi.items()))
    if stages.get("infer", {}).get("pi_student"):
        print(f"PI student: {stages['infer']['pi_student']}")
    agreement = stages.get("judge", {}).get("judge_vs_style_program")
    if agreement:
        print(f"judge vs style program: {agreement}")
    print("seconds per stage: " + ", ".join(f"{s} {r.get('seconds')}" for s, r in stages.items()))
    print(f"report: {Path(cfg.output) / 'report' / 'report.md'}")


if __name__ == "__main__":
    main()
