"""A persona-inference student: SFT with LoRA that teaches a small model to write a teacher's personas.

The paper's PI needs a big model; a 135 M model asked few-shot copies its exemplars. So a teacher
(a big model's PI run over a sample of the pairs, a released persona set, or the world's gold
personas) labels some pairs, and a small model learns to write those personas from the PI prompt
itself. The student then runs where the teacher did not: `persona-ray infer` with
`engine.model: <the merged student>`, `k_shot: 0` (the prompt it was trained on) and
`engine.prompt_format: completion`.

Data contract: `<data>/<train_split>.parquet` (augmented rows: prompt, chosen, rejected, the
teacher's chosen_persona and rejected_persona, domain) -> student_examples (one example per side
of cfg.training_type; default both) -> templates.tokenize_sft in Ray Data:
    {"pair_id", "persona_side", "input_ids", "labels"}   input: inference.prompt.build_pi_prompt
                                                         (k_shot exemplars); target: the persona
The trainer is SFT's (TRL's SFTTrainer); merge the adapter with persona_ray.tailoring.merge_adapter.

SFT's loss is the mean over every persona token, and a pair's two personas often share most of
their words: the few tokens that say which side a persona belongs to weigh little, and a small
student learns to write a fluent persona for the topic, the same for both sides. So DPO from
the merged SFT student follows (`train pi-dpo`, PIStudentDPO): under each side's PI prompt the
teacher's persona for that side beats the teacher's persona for the other side. What the two
share cancels in DPO's log-ratio; only the tokens that differ move. Data contract: the same rows
-> student_dpo_examples -> templates.tokenize_dpo:
    {"pair_id", "persona_side", "prompt_input_ids", "chosen_input_ids", "rejected_input_ids"}

    from persona_ray.tailoring.pi_student import PIStudentJobConfig, train_pi_student
    run = train_pi_student(PIStudentJobConfig(data="out/teacher", output="out/runs", model="smollm2"))
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from persona_ray.core.persona import near_copy, validate_persona
from persona_ray.core.settings import Settings
from persona_ray.inference.prompt import build_pi_prompt
from persona_ray.tailoring.base import TrainConfig
from persona_ray.tailoring.dpo import DPO, DPOJobConfig
from persona_ray.tailoring.sft import SFT
from persona_ray.tailoring.templates import _field, _sides


class PIPromptFields(Settings):
    """What the student's SFT and DPO share: the teacher's rows and the PI prompt they are shown as."""

    train_split: str = Field("sft_train", description="split to train on (its personas are the teacher's)")
    training_type: Literal["all", "chosen", "rejected"] = Field(
        "all", description="sides learned: all (both, as PI infers both), chosen or rejected")
    k_shot: int = Field(0, ge=0, description="exemplars in the student's PI prompt; infer with the same k_shot")
    exemplars: str | None = Field(None, description="exemplar YAML (inference/prompt.py); none: the bundled one")
    max_length: int = Field(1024, ge=2, description="tokens per example; the PI prompt is cut from the left")


class PIStudentJobConfig(PIPromptFields, TrainConfig):
    """PI student: (the PI prompt for a pair and side) -> the teacher's persona for that side."""

    val_split: str | None = Field("sft_val", description="split to evaluate on; none: no evaluation")
    model: str = Field("tiny", description="the student's base model: a local folder, 'tiny', or 'smollm2'")
    learning_rate: float = Field(2e-4, gt=0, description="peak learning rate")


def student_examples(row: dict, training_type: str, k_shot: int = 0, exemplars: str | None = None) -> list[dict]:
    """One example per side: {"pair_id", "persona_side", "input": the PI prompt, "response": the
    teacher's persona}. ValueError (naming the pair and field) when a text is missing or the
    teacher's persona is not valid by the shared persona rules (a student must not learn it)."""
    examples = []
    for side in _sides(training_type):
        persona = _field(row, f"{side}_persona")
        checked = validate_persona(persona)
        if not checked.valid:
            raise ValueError(f"pair {row.get('pair_id')!r}: {side}_persona: not a valid persona ({checked.reason})")
        prompt = build_pi_prompt(_field(row, "prompt"), _field(row, "chosen"), _field(row, "rejected"), side,
                                 row.get("domain") or "", k_shot, exemplars)
        examples.append({"pair_id": row.get("pair_id"), "persona_side": side, "input": prompt,
                         "response": persona})
    return examples


class PIStudent(SFT):
    """SFT's tokenising and trainer over PI examples."""

    name = "pi"

    def __init__(self, k_shot: int = 0, exemplars: str | None = None):
        self.k_shot, self.exemplars = k_shot, exemplars

    def examples(self, row: dict, training_type: str) -> list[dict]:
        return student_examples(row, training_type, self.k_shot, self.exemplars)


class PIStudentDPOJobConfig(PIPromptFields, DPOJobConfig):
    """PI student DPO from the merged SFT student: under each side's PI prompt the teacher's persona
    for that side beats the teacher's persona for the other side (the SFT student's k_shot and exemplars)."""

    val_split: str | None = Field(None, description="split to evaluate on; none: no evaluation")
    learning_rate: float = Field(1e-4, gt=0, description="peak learning rate")


def student_dpo_examples(row: dict, training_type: str, k_shot: int = 0, exemplars: str | None = None) -> list[dict]:
    """One example per side: {"pair_id", "persona_side", "prompt": the side's PI prompt, "chosen":
    the teacher's persona for the side, "rejected": the teacher's persona for the other side}.
    No examples for a pair whose two personas are near copies (nothing tells the sides apart there);
    ValueError as student_examples."""
    examples = student_examples(row, training_type, k_shot, exemplars)
    if near_copy(row["chosen_persona"], row["rejected_persona"]):
        return []
    other = {"chosen": "rejected", "rejected": "chosen"}
    return [{"pair_id": ex["pair_id"], "persona_side": ex["persona_side"], "prompt": ex["input"],
             "chosen": ex["response"], "rejected": row[f"{other[ex['persona_side']]}_persona"]} for ex in examples]


class PIStudentDPO(DPO):
    """DPO's tokenising and trainer over PI examples whose loser is the other side's persona."""

    name = "pi-dpo"

    def __init__(self, k_shot: int = 0, exemplars: str | None = None, max_prompt_length: int | None = None):
        super().__init__(max_prompt_length)
        self.k_shot, self.exemplars = k_shot, exemplars

    def examples(self, row: dict, training_type: str) -> list[dict]:
        return student_dpo_examples(row, training_type, self.k_shot, self.exemplars)


def check_pi_student_job(cfg: PIStudentJobConfig) -> tuple[str, int]:
    """Pre-flight checks (no Ray): (resolved model path, train rows); TrainConfigError otherwise."""
    return PIStudent(cfg.k_shot, cfg.exemplars).check(cfg)


def train_pi_student(cfg: PIStudentJobConfig) -> dict[str, Any]:
    """Validate, then train the student under Ray Train. Returns the run summary (ray_loop.run_training)."""
    from persona_ray.tailoring.ray_loop import run_training

    return run_training(PIStudent(cfg.k_shot, cfg.exemplars), cfg)


def check_pi_student_dpo_job(cfg: PIStudentDPOJobConfig) -> tuple[str, int]:
    """Pre-flight checks (no Ray): (resolved sft_model path, train rows); TrainConfigError otherwise."""
    return PIStudentDPO(cfg.k_shot, cfg.exemplars, cfg.max_prompt_length).check(cfg)


def train_pi_student_dpo(cfg: PIStudentDPOJobConfig) -> dict[str, Any]:
    """Validate, then run DPO from the merged SFT student under Ray Train (ray_loop.run_training)."""
    from persona_ray.tailoring.ray_loop import run_training

    return run_training(PIStudentDPO(cfg.k_shot, cfg.exemplars, cfg.max_prompt_length), cfg)
