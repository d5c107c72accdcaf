"""The PI student's data: what it learns from (tailoring/pi_student.py). No Ray needed."""

from __future__ import annotations

import pyarrow as pa
import pytest

from persona_ray.core import storage
from persona_ray.dataset.augment import ROW_FIELDS
from persona_ray.inference.prompt import build_pi_prompt
from persona_ray.tailoring import TrainConfigError
from persona_ray.tailoring.pi_student import PIStudentJobConfig, check_pi_student_job, student_examples
from persona_ray.tailoring.templates import IGNORE_INDEX, tokenize_sft

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
    assert "Response 1: 1. Find sun." in rejected["input"] and "Response 1: Water it" in chosen["input"]
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
