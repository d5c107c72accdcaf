"""Persona-tailoring DPO with LoRA: TRL's DPOTrainer on Ray Train, starting from a merged SFT model.

Data contract: `<data>/<train_split>.parquet` (augmented rows) -> templates.dpo_examples (under
P_C r_C beats r_R, under P_R r_R beats r_C, per cfg.training_type) -> templates.tokenize_dpo in
Ray Data:
    {"pair_id", "persona_side", "prompt_input_ids", "chosen_input_ids", "rejected_input_ids"}
TRL 1.16's DataCollatorForPreference reads prompt_ids / chosen_ids / rejected_ids: the token
columns rename them. The policy is `sft_model` + a new LoRA adapter; with the adapter disabled it
is `sft_model` itself, which TRL uses as the reference model (no second copy).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from persona_ray.tailoring.base import TrainConfig, TrainConfigError, TrainingMethod, trl_arguments
from persona_ray.tailoring.templates import dpo_examples, tokenize_dpo


class DPOJobConfig(TrainConfig):
    """Persona-tailored DPO from the merged SFT model: under each persona its own response wins."""

    train_split: str = Field("dpo_train", description="split to train on")
    val_split: str | None = Field("dpo_val", description="split to evaluate on; none: no evaluation")
    learning_rate: float = Field(5e-5, gt=0, description="peak learning rate")
    sft_model: str | None = Field(None, description="merged SFT model folder: the start and the reference model")
    beta: float = Field(0.1, description="DPO's beta: how far the policy may move from the reference")
    max_prompt_length: int | None = Field(None, ge=1, description="keep at most this many prompt tokens (cut from "
                                          "the left, the end of the prompt kept); none: only max_length limits it")
    loss_type: str = Field("sigmoid", description="any TRL DPOConfig loss_type")


class DPO(TrainingMethod):
    name = "dpo"
    model_field = "sft_model"
    # tokenize_dpo writes *_input_ids; TRL 1.16's DataCollatorForPreference reads *_ids.
    token_columns = {"prompt_input_ids": "prompt_ids", "chosen_input_ids": "chosen_ids",
                     "rejected_input_ids": "rejected_ids"}

    def examples(self, row: dict, training_type: str) -> list[dict]:
        return dpo_examples(row, training_type)

    def __init__(self, max_prompt_length: int | None = None):
        self.max_prompt_length = max_prompt_length

    def tokenize(self, example: dict, tokenizer, max_length: int) -> dict:
        return tokenize_dpo(example, tokenizer, max_length, self.max_prompt_length)

    def check(self, cfg: DPOJobConfig) -> tuple[str, int]:
        if not cfg.sft_model:
            raise TrainConfigError("sft_model", "DPO needs the merged SFT model it starts from (also the reference "
                                   "model)", "train SFT first, merge its checkpoint with persona_ray.tailoring."
                                   "merge_adapter, and set sft_model to the merged folder")
        return super().check(cfg)

    def build_trainer(self, plan, output_dir: str):
        import datasets
        from transformers import AutoTokenizer
        from trl import DPOConfig, DPOTrainer

        cfg: DPOJobConfig = plan.cfg
        tokenizer = AutoTokenizer.from_pretrained(plan.model_path)
        placeholder = datasets.Dataset.from_list([{"prompt": "Prompt: -\nResponse:", "chosen": " a", "rejected": " b"}])
        args = DPOConfig(**trl_arguments(cfg, plan, output_dir), beta=cfg.beta, loss_type=[cfg.loss_type])
        return DPOTrainer(model=plan.model_path, args=args, train_dataset=placeholder, processing_class=tokenizer,
                          eval_dataset=placeholder if plan.eval_steps else None, peft_config=cfg.lora.peft_config())


def check_dpo_job(cfg: DPOJobConfig) -> tuple[str, int]:
    """Pre-flight checks (no Ray): (resolved sft_model path, train rows); TrainConfigError otherwise."""
    return DPO(cfg.max_prompt_length).check(cfg)


def train_dpo(cfg: DPOJobConfig) -> dict[str, Any]:
    """Validate, then run DPO under Ray Train. Returns the run summary (see sft.train_sft); the
    per-step metrics file holds rewards/accuracies and rewards/margins."""
    from persona_ray.tailoring.ray_loop import run_training

    return run_training(DPO(cfg.max_prompt_length), cfg)
