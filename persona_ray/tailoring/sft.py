"""Persona-tailoring SFT with LoRA: TRL's SFTTrainer on Ray Train.

Data contract: `<data>/<train_split>.parquet` (augmented rows) -> templates.sft_examples (one
example per persona side of cfg.training_type) -> templates.tokenize_sft in Ray Data:
    {"pair_id", "persona_side", "input_ids", "labels"}   labels are -100 on the (prompt, persona) input
Each worker feeds its shard to SFTTrainer through TRL's DataCollatorForLanguageModeling (it pads and
keeps our labels as they are). The run saves LoRA adapter checkpoints; merge one into the base
model with persona_ray.tailoring.merge_adapter before DPO or inference.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from persona_ray.tailoring.base import TrainConfig, TrainingMethod, trl_arguments
from persona_ray.tailoring.templates import sft_examples, tokenize_sft


class SFTJobConfig(TrainConfig):
    """Persona-tailored SFT: (prompt, persona) -> the response that persona preferred."""

    train_split: str = Field("sft_train", description="split to train on")
    val_split: str | None = Field("sft_val", description="split to evaluate on; none: no evaluation")
    model: str = Field("tiny", description="base model: a local folder, 'tiny', or a hub id available offline")


class SFT(TrainingMethod):
    name = "sft"
    model_field = "model"
    token_columns = {"input_ids": "input_ids", "labels": "labels"}

    def examples(self, row: dict, training_type: str) -> list[dict]:
        return sft_examples(row, training_type)

    def tokenize(self, example: dict, tokenizer, max_length: int) -> dict:
        return tokenize_sft(example, tokenizer, max_length)

    def build_trainer(self, plan, output_dir: str):
        import datasets
        from transformers import AutoTokenizer
        from trl import SFTConfig, SFTTrainer

        cfg: SFTJobConfig = plan.cfg
        tokenizer = AutoTokenizer.from_pretrained(plan.model_path)
        eos = tokenizer.eos_token_id
        placeholder = datasets.Dataset.from_list([{"input_ids": [eos, eos], "labels": [-100, eos]}])
        args = SFTConfig(**trl_arguments(cfg, plan, output_dir), packing=False)
        # With evaluations during training transformers wants an eval set at construction; the
        # worker swaps in its val shard, as it does the train shard.
        return SFTTrainer(model=plan.model_path, args=args, train_dataset=placeholder, processing_class=tokenizer,
                          eval_dataset=placeholder if plan.eval_steps else None, peft_config=cfg.lora.peft_config())


def check_sft_job(cfg: SFTJobConfig) -> tuple[str, int]:
    """Pre-flight checks (no Ray): (resolved model path, train rows); TrainConfigError otherwise."""
    return SFT().check(cfg)


def train_sft(cfg: SFTJobConfig) -> dict[str, Any]:
    """Validate, then run SFT under Ray Train. Returns the run summary (run folder, checkpoint, steps,
    final_loss, rows_per_worker, resumed_from_step, eval, metrics files); see ray_loop.run_training."""
    from persona_ray.tailoring.ray_loop import run_training

    return run_training(SFT(), cfg)
