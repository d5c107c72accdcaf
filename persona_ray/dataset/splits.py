"""Splits: their names, how a prompt is assigned to one, where each lives, and reading one back.

    SPLITS            every split `persona-ray augment` writes
    TRAINING_SPLITS   all but `test`: the only ones training and the retrieval index may read
    assign_split      a deterministic split for a prompt, from a hash of its normalised text (a prompt
                      must never be both in `test` and in a training split)
    split_uri         <data>/<split>.parquet
    read_split        rows of one split of an augmented folder, or of a .jsonl/.parquet file itself
    read_table        rows of one .parquet or .jsonl file; a JSONL line that is not a JSON object
                      becomes {"_error": "line N: ..."} so the caller can quarantine it

    fewshot   exemplars for few-shot persona tailoring (PT-fs)
    sft_train / sft_val, dpo_train / dpo_val
              SFT and DPO share one train pool and one val pool (as in the paper) unless
              `share_train_pool: false`, which halves each pool between them
    test      held out
"""

from __future__ import annotations

import hashlib
import json

from pydantic import Field, model_validator

from persona_ray.core import storage
from persona_ray.core.settings import Settings

TEST_SPLIT = "test"
SPLITS = ("fewshot", "sft_train", "sft_val", "dpo_train", "dpo_val", TEST_SPLIT)
TRAINING_SPLITS = tuple(name for name in SPLITS if name != TEST_SPLIT)


class SplitSettings(Settings):
    """Shares of prompts per split (by a hash of the prompt: deterministic)."""

    test: float = Field(0.2, ge=0, lt=1, description="share of prompts held out for testing")
    fewshot: float = Field(0.05, ge=0, lt=1, description="share of prompts kept as few-shot exemplars")
    val: float = Field(0.1, ge=0, lt=1, description="share of prompts for validation")
    share_train_pool: bool = Field(True, description="SFT and DPO train on the same pool (the paper); false "
                                   "halves each pool between them")
    seed: str = Field("persona-ray-v1", description="change to draw other (still deterministic) splits")

    @model_validator(mode="after")
    def _leaves_training_data(self):
        if self.test + self.fewshot + self.val >= 1:
            raise ValueError("test + fewshot + val must leave a train pool (sum < 1)")
        return self


def _unit(text: str, seed: str) -> float:
    digest = hashlib.sha256(f"{seed}\x1f{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(prompt: str, cfg: SplitSettings) -> str:
    """Deterministic split for a prompt (all pairs of one prompt land together)."""
    key = " ".join(prompt.lower().split())
    u = _unit(key, cfg.seed)
    if u < cfg.test:
        return "test"
    if u < cfg.test + cfg.fewshot:
        return "fewshot"
    pool = "val" if u < cfg.test + cfg.fewshot + cfg.val else "train"
    if cfg.share_train_pool:
        return f"sft_{pool}"  # dpo_<pool> is the same set; written from it
    return f"sft_{pool}" if _unit(key, cfg.seed + "/pool") < 0.5 else f"dpo_{pool}"


def split_rows(rows: list[dict], cfg: SplitSettings) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for row in sorted(rows, key=lambda r: r["pair_id"]):
        out[assign_split(row["prompt"], cfg)].append(row)
    if cfg.share_train_pool:
        out["dpo_train"], out["dpo_val"] = list(out["sft_train"]), list(out["sft_val"])
    return out


def split_uri(data: str, split: str) -> str:
    return storage.join(data, f"{split}.parquet")


def read_table(uri: str) -> list[dict]:
    if uri.endswith(".parquet"):
        return storage.read_parquet(uri).to_pylist()
    lines = storage.read_bytes(uri).decode("utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            row = {"_error": f"line {number}: not JSON ({exc.msg})"}
        rows.append(row if isinstance(row, dict) else {"_error": f"line {number}: not a JSON object"})
    return rows


def read_split(uri: str, split: str) -> list[dict]:
    """Rows of one split: <uri>/<split>.parquet for an augmented folder, else the file itself."""
    source = split_uri(uri, split) if storage.is_dir(uri) else uri
    if not storage.exists(source):
        raise FileNotFoundError(f"{source}: not found")
    return read_table(source)
