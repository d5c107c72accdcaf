"""Persona-tailoring SFT with LoRA: TRL's SFTTrainer on Ray Train.

Data contract: `<data>/<train_split>.parquet` (persona_ray.dataset.augment rows) -> pt_templates.sft_examples
(one example per persona side of cfg.training_type) -> tokenize_sft in Ray Data:
    {"pair_id", "persona_side", "input_ids", "labels"}   labels are -100 on the (prompt, persona) input
Each worker feeds its shard to SFTTrainer through TRL's DataCollatorForLanguageModeling (it pads and
keeps our labels as they are). The run saves LoRA adapter checkpoints; merge one into the base
model with persona_ray.tailoring.merge_adapter before DPO or inference.
"""

from __future__ import annotations

from typing import Any

from persona_ray.tailoring.common import JobConfig, check_splits, load_tokenizer_checked, trl_arguments
from persona_ray.tailoring.ray_loop import run_training, run_worker


class SFTJobConfig(JobConfig):
    train_split: str = "sft_train"
    val_split: str | None = "sft_val"
    model: str = "tiny"  # base model: a local folder, "tiny", or a hub id available offline


def check_sft_job(cfg: SFTJobConfig) -> tuple[str, int]:
    """Pre-flight checks (no Ray): (resolved model path, train rows); TrainConfigError otherwise."""
    model_path, tokenizer = load_tokenizer_checked("model", cfg.model)
    return model_path, check_splits(cfg, "sft", tokenizer)


def build_sft_trainer(loop: dict, output_dir: str):
    """An SFTTrainer on a one-row placeholder dataset; run_worker swaps in the Ray shard."""
    import datasets
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    cfg: SFTJobConfig = loop["cfg"]
    tokenizer = AutoTokenizer.from_pretrained(loop["model_path"])
    eos = tokenizer.eos_token_id
    placeholder = datasets.Dataset.from_list([{"input_ids": [eos, eos], "labels": [-100, eos]}])
    args = SFTConfig(**trl_arguments(cfg, loop["max_steps"], output_dir), packing=False)
    return SFTTrainer(model=loop["model_path"], args=args, train_dataset=placeholder, processing_class=tokenizer,
                      peft_config=cfg.lora.peft_config())


def sft_train_loop(loop: dict) -> None:
    run_worker(loop, build_sft_trainer)


def train_sft(cfg: SFTJobConfig) -> dict[str, Any]:
    """Validate, then run SFT under Ray Train. Returns the summary of run_training (run folder,
    checkpoint, steps, final_loss, rows_per_worker, resumed_from_step, eval, metrics files)."""
    model_path, _ = check_sft_job(cfg)
    return run_training(cfg, "sft", sft_train_loop, model_path)
