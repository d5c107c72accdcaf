"""Persona tailoring (PT): a model that answers (prompt, persona) with a response for that persona.

    from persona_ray.tailoring import SFTJobConfig, DPOJobConfig, train_sft, train_dpo, merge_adapter

    sft = train_sft(SFTJobConfig(data="out/augmented", output="s3://bucket/runs", num_workers=2))
    merged = merge_adapter(sft["checkpoint"], "tiny", "out/sft-merged")
    dpo = train_dpo(DPOJobConfig(data="out/augmented", output="s3://bucket/runs", sft_model=merged))

Modules: templates (the exact model inputs and targets), fewshot (PT-fs prompts), base (the job
config, the method interface, pre-flight checks), sft / dpo (the two methods: config, examples,
tokenising, TRL trainer), pi_student (SFT, then DPO, that teach a small model a teacher's
personas from the PI prompt), ray_loop (any method under Ray Train), merge (adapter -> model folder).
Each job validates its config, split files, rows and model before any Ray worker starts
(TrainConfigError names the field and the fix). Test hook: PERSONA_RAY_TRAIN_FAIL_AT_STEP=N makes
worker rank 0 exit once at step N, so that FailureConfig restarts the run from the last checkpoint.
"""

# The names below load on first use (PEP 562), so `persona_ray.tailoring.templates` imports without
# Ray, pyarrow or pydantic: jobs/benchmarks/gpu_check.py runs where only torch + TRL are installed.
_EXPORTS = {
    "LoraSettings": "base", "TrainConfig": "base", "TrainConfigError": "base", "TrainingMethod": "base",
    "DPO": "dpo", "DPOJobConfig": "dpo", "check_dpo_job": "dpo", "train_dpo": "dpo",
    "merge_adapter": "merge", "FAIL_AT_STEP_ENV": "ray_loop", "plan_steps": "ray_loop",
    "SFT": "sft", "SFTJobConfig": "sft", "check_sft_job": "sft", "train_sft": "sft",
    "PIStudent": "pi_student", "PIStudentJobConfig": "pi_student", "check_pi_student_job": "pi_student",
    "train_pi_student": "pi_student", "PIStudentDPO": "pi_student", "PIStudentDPOJobConfig": "pi_student",
    "check_pi_student_dpo_job": "pi_student", "train_pi_student_dpo": "pi_student",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'persona_ray.tailoring' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"persona_ray.tailoring.{_EXPORTS[name]}"), name)
