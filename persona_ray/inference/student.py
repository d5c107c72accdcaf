"""The PI student route: a teacher's personas on some pairs teach a small model, which then infers
the personas of every pair the teacher left.

    teacher -> training rows                       <output>/teacher/   (or the teacher's own folder)
            -> `train pi` (tailoring/pi_student.py) under Ray Train, merged
                                                   <output>/runs/, <output>/model/
            -> `train pi-dpo` from it, when the route sets `dpo`, merged
                                                   <output>/runs/, <output>/model-dpo/
            -> `infer` with the student on the pairs the teacher did not label
                                                   <output>/infer/     (persona records, as PI writes)

A teacher is one of:
    a PI output folder (or its personas/)   a big model's personas on some of `pairs` (e.g. the
                                            pipeline's infer stage on a `share`): joined to their
                                            pairs (augment); the student skips those pairs
    an augmented folder                     rows with chosen_persona / rejected_persona of their
                                            own pairs (`import-released`, a world's gold split):
                                            the student infers every pair of `pairs`
    "reference"                             the project's hand-written reference set (dataset/reference.py)

Each step resumes: the teacher rows and the merged student are made once, and `infer` skips the
personas it wrote. The route only chains the jobs; what the student learns is tailoring/pi_student.py.

    from persona_ray.engines.settings import EngineSettings
    from persona_ray.inference.input_pairs import PairSource
    from persona_ray.inference.student import StudentRoute, run_student_route
    summary = run_student_route(StudentRoute(teacher="reference", train={"max_steps": 120}),
                                PairSource(input="pairs.jsonl"), "out/pi-student", EngineSettings(model="tiny"))
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any, Callable

from pydantic import Field, model_validator

from persona_ray.core import storage
from persona_ray.core.settings import Settings
from persona_ray.core.tracking import TrackingSettings
from persona_ray.engines.settings import EngineSettings
from persona_ray.inference.input_pairs import PairSource

log = logging.getLogger(__name__)
REFERENCE = "reference"


class StudentRoute(Settings):
    """A PI student in place of the PI model on most pairs (persona-ray pipeline `pi_student`)."""

    teacher: str | None = Field(None, description="what teaches the student: a PI output folder (personas of some "
                                "of the pairs), an augmented folder (rows with personas, e.g. `import-released`'s), "
                                "or 'reference' (the bundled reference set); none: the pipeline's PI model on "
                                "`share` of the pairs")
    share: float = Field(0.1, gt=0, lt=1, description="share of the pairs the PI model labels as the teacher when "
                         "`teacher` is none, picked by a hash of the pair id; the student infers the rest")
    train: dict[str, Any] = Field(default_factory=dict, description="PIStudentJobConfig keys, e.g. model (the "
                                  "student's base; default: the pipeline's base model), max_steps, learning_rate, lora")
    dpo: dict[str, Any] | None = Field(None, description="PIStudentDPOJobConfig keys: DPO from the merged SFT "
                                       "student, each side's persona beating the other side's (tailoring/"
                                       "pi_student.py), e.g. {max_steps: 40}; none: the SFT student infers")
    infer: dict[str, Any] = Field(default_factory=dict, description="InferConfig keys of the student's PI run, e.g. "
                                  "contrast; its `engine` keys replace the PI engine's (the model is the student, "
                                  "prompts are completions)")

    @model_validator(mode="after")
    def _parts_are_valid(self):
        from persona_ray.inference.infer import InferConfig
        from persona_ray.tailoring.pi_student import PIStudentDPOJobConfig, PIStudentJobConfig

        if "engine" in self.infer and not isinstance(self.infer["engine"], dict):
            raise ValueError("infer.engine: a mapping of EngineSettings keys")
        try:  # checked when the config is read, not an hour into the run
            PIStudentJobConfig(data="-", output="-", **self.train)
            if self.dpo is not None:
                PIStudentDPOJobConfig(data="-", output="-", **self.dpo)
                if {"k_shot", "exemplars", "sft_model"} & set(self.dpo):
                    raise ValueError("dpo: k_shot, exemplars and sft_model come from `train` (DPO starts from the "
                                     "SFT student and keeps its prompt); set them there")
            InferConfig(pairs=PairSource(input="-"), output="-", **{k: v for k, v in self.infer.items()
                                                                     if k != "engine"})
        except ValueError as exc:
            raise ValueError(f"train / dpo / infer: {exc}") from None
        return self


def teacher_rows(route: StudentRoute, teacher: str, pairs: PairSource, output: str) -> tuple[str, str | None, int]:
    """(the augmented folder the student trains on, the persona folder whose pairs it skips or None,
    taught pairs). Persona records are joined to their pairs once, into <output>/teacher."""
    from persona_ray.dataset.augment import AugmentConfig, run_augment
    from persona_ray.dataset.reference import write_reference
    from persona_ray.dataset.splits import SplitSettings, read_split

    split = route.train.get("train_split", "sft_train")
    folder = storage.join(output, "teacher")
    if teacher == REFERENCE:
        if not storage.exists(storage.join(folder, f"{split}.parquet")):
            write_reference(folder)
        return folder, None, len(read_split(folder, split))
    if storage.exists(storage.join(teacher, f"{split}.parquet")):
        return teacher, None, len(read_split(teacher, split))
    manifest_uri = storage.join(folder, "manifest.json")
    if not storage.exists(manifest_uri):  # every taught pair trains: no test, val or few-shot split
        run_augment(AugmentConfig(pairs=pairs, personas=teacher, output=folder, formats=["parquet"],
                                  splits=SplitSettings(test=0, fewshot=0, val=0)))
    taught = len(read_split(folder, split))
    if not taught:
        raise ValueError(f"pi_student.teacher: {teacher} holds no valid persona pair of {pairs.input}")
    return folder, teacher, taught


def merged_once(folder: str, train: Callable[[Any], dict], cfg: Any, base: str) -> str:
    """`folder`, holding `train(cfg)`'s adapter merged into `base`; trained only when no merged
    model is there yet (a rerun keeps it)."""
    from persona_ray.tailoring import merge_adapter

    if not os.path.exists(os.path.join(folder, "config.json")):
        run = train(cfg)
        shutil.rmtree(folder, ignore_errors=True)  # a half-merged folder from a killed run
        merge_adapter(run["checkpoint"], base, folder)
    return folder


def run_student_route(route: StudentRoute, pairs: PairSource, output: str, engine: EngineSettings,
                      teacher: str | None = None, student_model: str | None = None,
                      tracking: TrackingSettings | None = None) -> dict[str, Any]:
    """Teach, train and merge the student (once), then infer every pair the teacher left.
    `teacher`: route.teacher when None; `student_model`: the student's base when route.train names
    none (default: engine.model). Returns a summary: `student_personas` is the student's PI output
    folder, `teacher_personas` the teacher's where it labelled some of `pairs` (else None)."""
    from persona_ray.inference.infer import InferConfig, run_infer
    from persona_ray.tailoring.pi_student import (PIStudentDPOJobConfig, PIStudentJobConfig, train_pi_student,
                                                  train_pi_student_dpo)

    teacher = teacher or route.teacher
    if not teacher:
        raise ValueError("pi_student.teacher: nothing teaches the student (no folder given, no PI run on a share)")
    output = os.path.abspath(output)
    rows, elsewhere, taught = teacher_rows(route, teacher, pairs, output)
    train = PIStudentJobConfig(**{"data": rows, "output": os.path.join(output, "runs"), "name": "student",
                                  "model": student_model or engine.model, "val_split": None,
                                  **({"tracking": tracking} if tracking else {}), **route.train})
    started = time.time()
    student = merged_once(os.path.join(output, "model"), train_pi_student, train, train.model)
    if route.dpo is not None:
        dpo = PIStudentDPOJobConfig(**{"data": rows, "output": train.output, "name": "student-dpo",
                                       "sft_model": student, "train_split": train.train_split,
                                       "k_shot": train.k_shot, "exemplars": train.exemplars,
                                       "max_length": train.max_length,
                                       **({"tracking": tracking} if tracking else {}), **route.dpo})
        student = merged_once(os.path.join(output, "model-dpo"), train_pi_student_dpo, dpo, student)
    trained_s = time.time() - started

    settings = {k: v for k, v in route.infer.items() if k != "engine"}
    student_engine = EngineSettings(**{**engine.model_dump(), "backend": "vllm", "model": student,
                                       "prompt_format": "completion", **route.infer.get("engine", {})})
    infer_output = os.path.join(output, "infer")
    manifest = run_infer(InferConfig(**{"pairs": pairs, "output": infer_output,
                                        "engine": student_engine, "k_shot": train.k_shot,
                                        "exemplars": train.exemplars, "written_elsewhere": elsewhere,
                                        **({"tracking": tracking} if tracking else {}), **settings}))
    counts = manifest["counts"]
    log.info("PI student: %d taught pairs -> %d pairs inferred by the student (%.1f%% valid personas)",
             taught, counts["valid_pairs"], manifest["throughput"]["valid_pct"],
             extra={"stage": "pi-student", "taught_pairs": taught, "student_pairs": counts["valid_pairs"]})
    return {"taught_pairs": taught, "teacher_personas": elsewhere, "student": student,
            "student_personas": infer_output, "student_pairs": counts["valid_pairs"],
            "left_to_teacher": counts["left_to_another_run"], "personas": counts["persona_records"],
            "valid_pct": manifest["throughput"]["valid_pct"], "train_s": round(trained_s, 1),
            "infer_s": manifest["timings_s"]["total"]}
