"""Merge a LoRA adapter (a Ray Train checkpoint, an adapter folder, or either on S3) into its base
model, so vLLM and transformers load the result like any checkpoint (and DPO can start from it)."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pyarrow.fs as pafs

from persona_ray.core import storage
from persona_ray.core.models import resolve_model
from persona_ray.tailoring.ray_loop import RAY_CHECKPOINT_SUBDIR


def _local_adapter_dir(source: Any, scratch: str) -> str:
    """A local folder holding adapter_config.json, from a ray.train.Checkpoint, a Ray checkpoint
    folder (holding checkpoint/), an adapter folder, or the s3:// URI of either."""
    if hasattr(source, "to_directory"):  # ray.train.Checkpoint
        source = source.to_directory(os.path.join(scratch, "ckpt"))
    source = str(source)
    if storage.is_s3(source):
        fs, path = storage.filesystem(source)
        local = os.path.join(scratch, "download")
        pafs.copy_files(path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        source = local
    for candidate in (source, os.path.join(source, RAY_CHECKPOINT_SUBDIR)):
        if os.path.isfile(os.path.join(candidate, "adapter_config.json")):
            return candidate
    raise FileNotFoundError(f"{source}: no adapter_config.json here or in {RAY_CHECKPOINT_SUBDIR}/ "
                            "(expected a LoRA checkpoint written by persona_ray.tailoring)")


def merge_adapter(checkpoint_or_adapter_dir: Any, base_model: str, out_dir: str) -> str:
    """Load `base_model` + the LoRA adapter, merge_and_unload, save model + tokenizer to `out_dir`
    (a local folder that transformers and vLLM load like any checkpoint). Returns out_dir."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if storage.is_s3(out_dir):
        raise ValueError("out_dir must be a local folder (vLLM and transformers load merged models from disk)")
    base_path = resolve_model(base_model)
    with tempfile.TemporaryDirectory(prefix="persona-ray-merge-") as scratch:
        adapter = _local_adapter_dir(checkpoint_or_adapter_dir, scratch)
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        has_tokenizer = any(os.path.exists(os.path.join(adapter, f)) for f in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer = AutoTokenizer.from_pretrained(adapter if has_tokenizer else base_path)
        os.makedirs(out_dir, exist_ok=True)
        merged.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    return out_dir