"""A PI student on the reference persona set, beside the same small model asked few-shot.

    python jobs/benchmarks/pi_student_reference.py [--model smollm2] [--steps 150]
                                                   [--learning-rate 5e-4] [--k-shot 2]
                                                   [--output /tmp/pi-student-reference]

One run, on the project's hand-written reference set (dataset/reference.py):
1. teacher: the reference personas of the train split (both sides of every pair);
2. student: `--model` + LoRA on every linear layer, SFT under Ray Train on (the zero-shot PI prompt ->
   the reference persona) (tailoring/pi_student.py), merged;
3. on every test pair, through `infer` (vLLM CPU): the student (k_shot 0, completion prompt, the
   prompt it learnt) greedy, the student with contrastive selection (inference/contrast.py:
   --contrast-samples candidates a side, 0 to skip), and `--model` itself asked few-shot (k_shot
   --k-shot, chat template, greedy);
4. both scored without a judge (quality/persona_stats.py): valid rate, the same persona on both
   sides, exemplar copies, distinct personas, and similarity to the reference personas (MiniLM
   cosine, mean and the paired student - few-shot difference with 95 % CIs over pairs).
Prints those, the generation throughput of each (pairs/s, engine start excluded) and their ratio,
and ten test personas with the reference beside them. Settings are fixed before the run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

LINEAR = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def rows_from_records(pairs: list[dict], records: list[dict]) -> list[dict]:
    """One row per pair with the valid persona of each side (None where PI wrote none)."""
    found = {(r["pair_id"], r["side"]): r["persona"] for r in records if r.get("valid")}
    return [{"pair_id": p["pair_id"], "chosen_persona": found.get((p["pair_id"], "chosen")),
             "rejected_persona": found.get((p["pair_id"], "rejected"))} for p in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--k-shot", type=int, default=2, help="exemplars shown to the few-shot model")
    parser.add_argument("--contrast-samples", type=int, default=4, help="candidates a side; 0: no contrast run")
    parser.add_argument("--output", default="/tmp/pi-student-reference")
    args = parser.parse_args()

    import pyarrow as pa

    from persona_ray.core.shards import read_shards
    from persona_ray.dataset.reference import reference_rows, write_reference
    from persona_ray.inference.infer import InferConfig, run_infer
    from persona_ray.inference.input_pairs import PairSource
    from persona_ray.quality.persona_stats import persona_statistics, reference_similarity
    from persona_ray.tailoring import merge_adapter
    from persona_ray.tailoring.pi_student import PIStudentJobConfig, train_pi_student

    out = Path(args.output)
    counts = write_reference(str(out / "reference"))
    student = out / "student"
    started = time.time()
    if not (student / "config.json").exists():
        run = train_pi_student(PIStudentJobConfig(
            data=str(out / "reference"), output=str(out / "runs"), name="pi-student-reference", model=args.model,
            max_steps=args.steps, learning_rate=args.learning_rate, per_device_batch_size=4, cpus_per_worker=2,
            save_steps=args.steps, logging_steps=10, evaluate=False, lora={"target_modules": LINEAR.split(",")}))
        merge_adapter(run["checkpoint"], args.model, str(student))
    train_s = time.time() - started

    test = reference_rows("test")
    pairs_file = out / "test-pairs.jsonl"
    pairs_file.write_text("".join(json.dumps({k: r[k] for k in ("pair_id", "prompt", "chosen", "rejected", "domain")})
                                  + "\n" for r in test))
    runs = {
        "student": {"model": str(student), "prompt_format": "completion", "k_shot": 0},
        f"{args.model} {args.k_shot}-shot": {"model": args.model, "prompt_format": "chat", "k_shot": args.k_shot},
    }
    if args.contrast_samples:
        runs["student contrast"] = {**runs["student"], "contrast": {"samples": args.contrast_samples}}
    rows_by_model, speed = {}, {}
    for name, run in runs.items():
        folder = out / f"infer-{name.replace(' ', '-')}"
        manifest = run_infer(InferConfig(
            pairs=PairSource(input=str(pairs_file)), output=str(folder), k_shot=run["k_shot"],
            contrast=run.get("contrast"),
            max_attribute_chars=80, max_preference_chars=160,
            engine={"model": run["model"], "prompt_format": run["prompt_format"],
                    "sampling": {"max_tokens": 80, "temperature": 0.0}}))
        records = (read_shards(str(folder / "personas")) or pa.table({})).to_pylist()
        rows_by_model[name] = rows_from_records(test, records)
        speed[name] = manifest["throughput"]["pairs_per_s"]
    few = list(runs)[1]
    result = {
        "model": args.model, "reference_pairs": counts, "steps": args.steps, "learning_rate": args.learning_rate,
        "train_and_merge_s": round(train_s, 1),
        "statistics": {name: persona_statistics(rows) for name, rows in rows_by_model.items()},
        "reference_similarity": reference_similarity(rows_by_model, test),
        "pairs_per_s": speed,
        "student_over_fewshot_pairs_per_s": round(speed["student"] / speed[few], 2) if speed[few] else None,
        "test_examples": [{"reference": r["chosen_persona"], **{name: rows[i]["chosen_persona"]
                                                                for name, rows in rows_by_model.items()}}
                          for i, r in enumerate(test[:10])],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
