"""Persona tailoring (PT): a model that answers (prompt, persona) with a response for that persona.

    from persona_ray.tailoring import SFTJobConfig, DPOJobConfig, train_sft, train_dpo, merge_adapter

    sft = train_sft(SFTJobConfig(data="out/augmented", output="s3://bucket/runs", num_workers=2))
    merged = merge_adapter(sft["checkpoint"], "tiny", "out/sft-merged")
    dpo = train_dpo(DPOJobConfig(data="out/augmented", output="s3://bucket/runs", sft_model=merged))

Modules: templates (the exact model inputs and targets), fewshot (PT-fs prompts), base (the job
config, the method interface, pre-flight checks), sft / dpo (the two methods: config, examples,
tokenising, TRL trainer), ray_loop (any method under Ray Train), merge (adapter -> model folder).
Each job validates its config, split files, rows and model before any Ray worker starts
(TrainConfigError names the field and the fix). Test hook: PERSONA_RAY_TRAIN_FAIL_AT_STEP=N makes
worker rank 0 exit once at step N, so that FailureConfig restarts the run from the last checkpoint.
"""

from persona_ray.tailoring.base import LoraSettings, TrainConfig, TrainConfigError, TrainingMethod
from persona_ray.tailoring.dpo import DPO, DPOJobConfig, check_dpo_job, train_dpo
from persona_ray.tailoring.merge import merge_adapter
from persona_ray.tailoring.ray_loop import FAIL_AT_STEP_ENV, plan_steps
from persona_ray.tailoring.sft import SFT, SFTJobConfig, check_sft_job, train_sft

__all__ = [
    "FAIL_AT_STEP_ENV", "LoraSettings", "TrainConfig", "TrainConfigError", "TrainingMethod", "merge_adapter",
    "plan_steps", "SFT", "SFTJobConfig", "check_sft_job", "train_sft", "DPO", "DPOJobConfig", "check_dpo_job",
    "train_dpo",
]
