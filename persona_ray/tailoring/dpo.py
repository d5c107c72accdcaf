"""Persona-tailoring DPO with LoRA: TRL's DPOTrainer on Ray Train, starting from a merged SFT model.

Data contract: `<data>/<train_split>.parquet` (persona_ray.dataset.augment rows) -> pt_templates.dpo_examples
(under P_C r_C beats r_R, under P_R r_R beats r_C, per cfg.training_type) -> tokenize_dpo in Ray Data:
    {"pair_id", "persona_side", "prompt_input_ids", "chosen_input_ids", "rejected_input_ids"}
TRL 1.16's DataCollatorForPreference reads prompt_ids / chosen_ids / rejected_ids: the worker's
collate function renames the columns. The policy is `sft_model` + a new LoRA adapter; with the
adapter disabled it is `sft_model` itself, which TRL uses as the reference model (no second copy).
"""

from __future__ import annotations

from typing import Any

from persona_ray.tailoring.common import (JobConfig, TrainConfigError, check_splits, load_tokenizer_checked,
                                      trl_arguments)
from persona_ray.tailoring.ray_loop import run_training, run_worker


class DPOJobConfig(JobConfig):
    train_split: str = "dpo_train"
    val_split: str | None = "dpo_val"
    learning_rate: float = 5e-5
    sft_model: str | None = None  # merged SFT model folder: the start and the reference model
    beta: float = 0.1
    loss_type: str = "sigmoid"  # any TRL DPOConfig loss_type


def check_dpo_job(cfg: DPOJobConfig) -> tuple[str, int]:
    """Pre-flight checks (no Ray): (resolved sft_model path, train rows); TrainConfigError otherwise."""
    if not cfg.sft_model:
        raise TrainConfigError("sft_model", "DPO needs the merged SFT model it starts from (also the reference model)",
                               "train SFT first, merge its checkpoint with persona_ray.tailoring.merge_adapter, and set "
                               "sft_model to the merged folder")
    model_path, tokenizer = load_tokenizer_checked("sft_model", cfg.sft_model)
    return model_path, check_splits(cfg, "dpo", tokenizer)


def build_dpo_trainer(loop: dict, output_dir: str):
    """A DPOTrainer on a one-row placeholder dataset; run_worker swaps in the Ray shard."""
    import datasets
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    cfg: DPOJobConfig = loop["cfg"]
    tokenizer = AutoTokenizer.from_pretrained(loop["model_path"])
    placeholder = datasets.Dataset.from_list([{"prompt": "Prompt: -\nResponse:", "chosen": " a", "rejected": " b"}])
    args = DPOConfig(**trl_arguments(cfg, loop["max_steps"], output_dir), beta=cfg.beta, loss_type=[cfg.loss_type])
    return DPOTrainer(model=loop["model_path"], args=args, train_dataset=placeholder, processing_class=tokenizer,
                      peft_config=cfg.lora.peft_config())


def dpo_train_loop(loop: dict) -> None:
    run_worker(loop, build_dpo_trainer)


def train_dpo(cfg: DPOJobConfig) -> dict[str, Any]:
    """Validate, then run DPO under Ray Train. Returns the run summary (see train_sft.train_sft);
    the per-step metrics file holds rewards/accuracies and rewards/margins."""
    model_path, _ = check_dpo_job(cfg)
    return run_training(cfg, "dpo", dpo_train_loop, model_path)
