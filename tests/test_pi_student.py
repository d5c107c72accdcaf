"""The PI student (tailoring/pi_student.py): what its SFT and DPO learn from (no Ray needed), and,
on a tiny synthetic set, that the pipeline's pi-student stage trains it under Ray Train (SFT, then
DPO from it) and it infers its teacher's personas on pairs it never saw, through `persona-ray infer`
with contrastive selection (slow)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from persona_ray.core import storage
from persona_ray.core.schema import SIDES
from persona_ray.dataset.augment import ROW_FIELDS
from persona_ray.inference.prompt import build_pi_prompt
from persona_ray.tailoring import TrainConfigError
from persona_ray.tailoring.pi_student import (PIStudentDPOJobConfig, PIStudentJobConfig, check_pi_student_dpo_job,
                                              check_pi_student_job, student_dpo_examples, student_examples)
from persona_ray.tailoring.templates import IGNORE_INDEX, tokenize_dpo, tokenize_sft

ROW = {"pair_id": "p1", "prompt": "How do I keep basil alive?", "chosen": "Water it when the soil is dry.",
       "rejected": "1. Find sun. 2. Water. 3. Prune.", "domain": "safety_qa", "source": "test",
       "chosen_persona": "The user is a busy gardener and prefers a single short tip.",
       "rejected_persona": "The user is a methodical beginner and prefers numbered steps."}


def test_a_student_learns_the_prompt_infer_sends_for_each_side_and_the_teachers_persona():
    chosen, rejected = student_examples(ROW, "all")
    for example, side in ((chosen, "chosen"), (rejected, "rejected")):
        # exactly what `persona-ray infer` sends at k_shot 0 for this side: the student sees no other prompt
        assert example["input"] == build_pi_prompt(ROW["prompt"], ROW["chosen"], ROW["rejected"], side, "safety_qa", 0)
        assert example["input"].endswith("Persona:") and example["response"] == ROW[f"{side}_persona"]
        assert example["persona_side"] == side and example["pair_id"] == "p1"
    # the rejected side's prompt shows the rejected response as the preferred one
    assert "Response 1 (7 words): 1. Find sun." in rejected["input"]
    assert "Response 1 (7 words): Water it" in chosen["input"]
    assert [e["persona_side"] for e in student_examples(ROW, "chosen")] == ["chosen"]
    with_shots = student_examples(ROW, "chosen", k_shot=2)[0]["input"]
    assert with_shots == build_pi_prompt(ROW["prompt"], ROW["chosen"], ROW["rejected"], "chosen", "safety_qa", 2)


@pytest.mark.parametrize("persona, reason", [
    ("The user is a devout Catholic and prefers prayers.", "protected attribute"),
    ("The user is creative and creative and creative and prefers creative creative creative.", "degenerate"),
    ("", "rejected_persona is missing"),
])
def test_a_teacher_persona_the_shared_rules_refuse_is_not_learnt(persona, reason):
    with pytest.raises(ValueError, match=reason) as err:
        student_examples({**ROW, "rejected_persona": persona}, "all")
    assert "'p1'" in str(err.value)


def test_the_target_is_the_persona_alone_and_a_bad_split_is_refused_before_ray(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    example = student_examples(ROW, "chosen")[0]
    tokens = tokenize_sft(example, tokenizer, 1024)
    target = [t for t, label in zip(tokens["input_ids"], tokens["labels"]) if label != IGNORE_INDEX]
    assert tokenizer.decode(target, skip_special_tokens=True).strip() == ROW["chosen_persona"]
    rows = [ROW, {**ROW, "pair_id": "p2", "chosen_persona": "The user is of Irish descent and prefers warmth."}]
    storage.write_parquet(pa.Table.from_pylist([{f: r[f] for f in ROW_FIELDS} for r in rows]),
                          str(tmp_path / "sft_train.parquet"))
    cfg = PIStudentJobConfig(data=str(tmp_path), output=str(tmp_path / "runs"), model=tiny_model, val_split=None)
    with pytest.raises(TrainConfigError, match=r"training_type: 1 of 2 rows .* 'p2': chosen_persona: not a valid"):
        check_pi_student_job(cfg)
    with pytest.raises(ValueError, match="training_type"):
        PIStudentJobConfig(data="d", output="o", training_type="none")


def test_student_dpo_makes_each_sides_persona_beat_the_other_sides_under_the_same_prompt(tiny_model, tmp_path):
    examples = student_dpo_examples(ROW, "all")
    for example, sft in zip(examples, student_examples(ROW, "all")):
        other = "rejected" if example["persona_side"] == "chosen" else "chosen"
        assert example["prompt"] == sft["input"] and example["chosen"] == sft["response"]
        assert example["rejected"] == ROW[f"{other}_persona"]
    assert [e["persona_side"] for e in student_dpo_examples(ROW, "rejected")] == ["rejected"]
    # two personas that say the same thing teach nothing about which side is which: no example
    same = {**ROW, "rejected_persona": ROW["chosen_persona"].replace("single", "one")}
    assert student_dpo_examples(same, "all") == []
    with pytest.raises(ValueError, match="rejected_persona"):
        student_dpo_examples({**ROW, "rejected_persona": "prefers lists"}, "all")
    from transformers import AutoTokenizer

    tokens = tokenize_dpo(examples[0], AutoTokenizer.from_pretrained(tiny_model), 1024)
    assert tokens["prompt_input_ids"] and tokens["chosen_input_ids"] != tokens["rejected_input_ids"]
    storage.write_parquet(pa.Table.from_pylist([{f: ROW[f] for f in ROW_FIELDS}]),
                          str(tmp_path / "sft_train.parquet"))
    with pytest.raises(TrainConfigError, match="sft_model"):  # DPO starts from the SFT student
        check_pi_student_dpo_job(PIStudentDPOJobConfig(data=str(tmp_path), output=str(tmp_path / "runs")))
    assert check_pi_student_dpo_job(PIStudentDPOJobConfig(data=str(tmp_path), output=str(tmp_path / "runs"),
                                                          sft_model=tiny_model))[1] == 1


def _form_pairs(prompts: list[str], start: int) -> list[dict]:
    """A tiny synthetic PI set: per prompt a short prose and a short numbered answer (world/synthetic.py),
    preferred in turn; the teacher's persona of each side is the persona-world type of its form."""
    from persona_ray.world.spec import DEFAULT_TYPES
    from persona_ray.world.synthetic import synthetic_response

    persona = {t.style: t.persona for t in DEFAULT_TYPES if t.length == "short"}
    rows = []
    for i, prompt in enumerate(prompts, start=start):
        chosen, rejected = ("short-prose", "short-steps")[:: 1 if i % 2 == 0 else -1]
        rows.append({"pair_id": f"form-{i:03d}", "prompt": prompt, "chosen": synthetic_response(prompt, chosen),
                     "rejected": synthetic_response(prompt, rejected), "domain": "dialogue", "source": "test",
                     "chosen_persona": persona[chosen], "rejected_persona": persona[rejected]})
    return rows


@pytest.mark.slow
def test_the_pipelines_pi_student_stage_trains_a_tiny_student_that_infers_its_teachers_personas(ray_local, tmp_path):
    """The pipeline's pi-student stage (inference/student.py) on 52 pairs whose teacher labelled 40
    (the persona of each side follows the form of its response): the tiny model + LoRA trained
    under Ray Train (120 steps), then 8 steps of DPO from it (each side's persona ahead of the
    other side's), writes the teacher's persona for at least 90 % of the 12 unseen pairs' sides,
    through the PI job with contrastive selection (the student's greedy and sampled personas of
    both sides, scored under both prompts), and leaves the taught pairs to the teacher; the
    augment stage joins both persona folders; a rerun trains and writes nothing.
    Measured on the AVX2-only EPYC (2026-12-07): 100 SFT steps already gave 40 of 40 sides with
    greedy decoding; 60 steps gave 0 (the same persona for every side). On the avx512_bf16 EPYC the
    same day, 40 DPO steps at 5e-3 from those 60 gave 0 of 24 valid: DPO moves the tokens that
    differ between the two personas, it does not teach fluent text, so SFT must come first."""
    import json

    from persona_ray.core.schema import PERSONA_SCHEMA, given_persona_record
    from persona_ray.core.shards import ShardWriter
    from persona_ray.pipeline.run import Pipeline, PipelineConfig
    from persona_ray.testing.tiny_model import LINEAR_LAYERS
    from persona_ray.world.build import world_prompts
    from tests.test_infer import personas_by_key

    prompts = world_prompts()
    taught, unseen = _form_pairs(prompts[:40], 0), _form_pairs(prompts[150:162], 150)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({k: r[k] for k in ("pair_id", "prompt", "chosen", "rejected", "domain")})
                             + "\n" for r in taught + unseen))
    teacher = ShardWriter(str(tmp_path / "teacher" / "personas"), PERSONA_SCHEMA, shard_size=100)
    teacher.add(pa.Table.from_pylist([given_persona_record(r["pair_id"], side, r[f"{side}_persona"], "gold")
                                      for r in taught for side in SIDES], schema=PERSONA_SCHEMA))
    teacher.close()
    lora = {"r": 16, "alpha": 32, "target_modules": list(LINEAR_LAYERS)}
    route = {"teacher": str(tmp_path / "teacher"),
             "train": {"max_steps": 120, "learning_rate": 5e-3, "per_device_batch_size": 8, "max_length": 512,
                       "save_steps": 120, "logging_steps": 20, "evaluate": False, "lora": lora},
             # DPO from it, a few steps: the mechanics (trained, merged, the model that infers)
             "dpo": {"max_steps": 8, "learning_rate": 5e-4, "per_device_batch_size": 8, "save_steps": 8,
                     "logging_steps": 4, "evaluate": False, "lora": lora},
             "infer": {"contrast": {"samples": 2},
                       # 4 pairs a contrast batch: 3 batches. The tiny tokenizer decodes a first "The" as
                       # " The", so a pattern that starts "The user" would push the student off its tokens.
                       "engine": {"vllm": {"batch_size": 24}, "guided_decoding": False}}}
    pipeline = Pipeline(PipelineConfig(pairs={"input": str(pairs)}, output=str(tmp_path / "run"), pi_student=route,
                                       engine={"model": "tiny", "sampling": {"max_tokens": 48, "temperature": 0.0}}))
    assert "teacher is given" in pipeline.run_stage("infer")["skipped"]  # no PI model runs at all
    summary = pipeline.run_stage("pi-student")
    assert (summary["taught_pairs"], summary["student_pairs"], summary["left_to_teacher"]) == (40, 12, 40)
    assert summary["personas"] == 2 * len(unseen) and summary["teacher_personas"] == route["teacher"]
    assert summary["student"] == pipeline.path("pi-student", "model-dpo")  # the DPO student infers
    logged = [json.loads(line) for line in open(pipeline.path("pi-student", "runs", "student-dpo", "metrics.jsonl"))]
    margins = [(step["step"], step["rewards/margins"]) for step in logged if "rewards/margins" in step]
    assert [s for s, _ in margins] == [4, 8] and margins[-1][1] > 0, logged  # own side's persona now ahead
    records = personas_by_key(pipeline.path("pi-student", "infer"))
    assert {pair_id for pair_id, _ in records} == {r["pair_id"] for r in unseen}
    right = [records[(r["pair_id"], side)]["persona"] == r[f"{side}_persona"] for r in unseen for side in SIDES]
    print(f"teacher's persona on {sum(right)} of {len(right)} unseen sides")
    assert sum(right) >= 0.9 * len(right), records

    again = pipeline.stage_pi_student()  # as a resumed run does: the student is kept, nothing is written
    assert again["train_s"] < 5 and again["personas"] == summary["personas"]
    assert json.loads(open(pipeline.path("pi-student", "infer", "manifest.json")).read())["counts"][
        "written_this_run"] == 0
    joined = pipeline.run_stage("augment")
    valid = sum(records[(r["pair_id"], "chosen")]["valid"] and records[(r["pair_id"], "rejected")]["valid"]
                for r in unseen)
    assert joined["augmented_pairs"] == len(taught) + valid, joined
    assert joined["pairs_without_personas"] == joined["orphan_persona_pairs"] == 0
