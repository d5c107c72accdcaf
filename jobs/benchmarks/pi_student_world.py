"""A PI student in the persona world: the teacher labels a fraction of the training pairs, a small
model learns to write those personas, and then infers the personas of pairs it never saw.

    python jobs/benchmarks/pi_student_world.py [--fraction 0.1] [--model smollm2] [--steps 80]
                                               [--learning-rate 2e-4] [--lora-modules q_proj,...]
                                               [--contrast-samples 4] [--contrast-weight 1.0]
                                               [--output /tmp/pi-student-world]

One run, on the world built from the bundled SmolLM2 responses (seed 0):
1. teacher: the world's gold personas on --fraction of the distinct training pairs (both sides);
2. student: `--model` + LoRA, SFT under Ray Train on (the zero-shot PI prompt -> teacher persona)
   (tailoring/pi_student.py), merged;
3. the student infers both personas of every validation and test pair through `infer` (vLLM,
   k_shot 0, guided decoding), greedy and, unless --contrast-samples is 0, by contrastive selection
   (inference/contrast.py), and the personas are scored against the world's truth (the length and
   form axes: world/measure.pi_accuracy), validation and test apart.
Prints the accuracy per side and axis, the valid rate, the share of pairs whose two personas are
the same sentence, and ten test personas beside their truth. The settings (steps, rate) are fixed
before the run; any tuning is done on the validation numbers, never the test ones.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--lora-modules", default="q_proj,k_proj,v_proj,o_proj",
                        help="comma-separated modules that get an adapter")
    parser.add_argument("--contrast-samples", type=int, default=4, help="candidates a side; 0: greedy only")
    parser.add_argument("--contrast-weight", type=float, default=1.0)
    parser.add_argument("--output", default="/tmp/pi-student-world")
    args = parser.parse_args()

    import pyarrow as pa

    from persona_ray.core.shards import read_shards
    from persona_ray.inference.infer import InferConfig, run_infer
    from persona_ray.inference.input_pairs import PairSource
    from persona_ray.tailoring import merge_adapter
    from persona_ray.tailoring.pi_student import PIStudentJobConfig, train_pi_student
    from persona_ray.world.build import write_world
    from persona_ray.world.experiment import (World, WorldConfig, distinct_pairs, with_inferred_personas,
                                              write_pi_pairs)
    from persona_ray.world.measure import pi_accuracy

    out = Path(args.output)
    world = World(WorldConfig(output=str(out / "world"), model=args.model, writer="file", responses_file="bundled"))
    if not Path(world.data("gold"), "test.parquet").exists():
        world.build()

    train, val, test = (distinct_pairs(world.read_rows(split)) for split in ("train", "val", "test"))
    taught = random.Random(0).sample(train, math.ceil(args.fraction * len(train)))
    teacher = str(out / "teacher")
    write_world({"train": taught, "val": val[:16]}, teacher)
    student = out / "student"
    started = time.time()
    if not (student / "config.json").exists():
        run = train_pi_student(PIStudentJobConfig(
            data=teacher, output=str(out / "runs"), name=f"pi-student-{args.fraction}", model=args.model,
            max_steps=args.steps, learning_rate=args.learning_rate, per_device_batch_size=4, cpus_per_worker=2,
            save_steps=args.steps, logging_steps=10, lora={"target_modules": args.lora_modules.split(",")}))
        merge_adapter(run["checkpoint"], args.model, str(student))
    train_s = time.time() - started

    modes = {"greedy": None}
    if args.contrast_samples:
        modes[f"contrast-{args.contrast_samples}-w{args.contrast_weight:g}"] = {
            "samples": args.contrast_samples, "weight": args.contrast_weight}
    results = {}
    for (mode, contrast), (name, rows) in itertools.product(modes.items(), (("val", val), ("test", test))):
        pairs = out / f"{name}-pairs.jsonl"
        write_pi_pairs(rows, pairs)
        started = time.time()
        folder = out / f"infer-{name}-{mode}"
        manifest = run_infer(InferConfig(
            pairs=PairSource(input=str(pairs)), output=str(folder), k_shot=0, contrast=contrast,
            engine={"model": str(student), "prompt_format": "completion",
                    "sampling": {"max_tokens": 80, "temperature": 0.0}}))
        records = (read_shards(str(folder / "personas")) or pa.table({})).to_pylist()
        scored, _ = with_inferred_personas(rows, records)
        same = sum(r["chosen_persona"].strip() == r["rejected_persona"].strip() for r in scored)
        results[f"{name} {mode}"] = {"pairs": len(rows), "pairs_with_two_valid": len(scored),
                         "valid_pct": manifest["throughput"]["valid_pct"], "same_persona_both_sides": same,
                         "infer_s": round(time.time() - started, 1),
                         "accuracy_vs_truth": {k: round(v, 3) if isinstance(v, float) else v
                                               for k, v in pi_accuracy(scored, world.cfg.types).items()}}
        if name == "test":
            results[f"test_examples {mode}"] = [{"truth": r["chosen_type"], "student": r["chosen_persona"]} for r in scored[:10]]
    print(json.dumps({"model": args.model, "fraction": args.fraction, "taught_pairs": len(taught),
                      "train_pairs": len(train), "steps": args.steps, "learning_rate": args.learning_rate,
                      "lora_modules": args.lora_modules,
                      "train_and_merge_s": round(train_s, 1), **results}, indent=2))


if __name__ == "__main__":
    main()
