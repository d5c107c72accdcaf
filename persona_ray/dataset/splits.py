"""Splits: their names, how a prompt is assigned to one, where each lives, and reading one back.

    SPLITS            every split `persona-ray augment` writes
    TRAINING_SPLITS   all but `test`: the only ones training and the retrieval index may read
    assign_split      a deterministic split for a prompt, from a hash of its normalised text (a prompt
                      must never be both in `test` and in a training split)
    exact_bounds      with exact test / few-shot sizes: the two cut points found once over all prompts
    split_uri         <data>/<split>.parquet
    read_split        rows of one split of an augmented folder, or of a .jsonl/.parquet file itself
    read_table        rows of one .parquet or .jsonl file; a JSONL line that is not a JSON object
                      becomes {"_error": "line N: ..."} so the caller can quarantine it

    fewshot   exemplars for few-shot persona tailoring (PT-fs)
    sft_train / sft_val, dpo_train / dpo_val
              SFT and DPO share one train pool and one val pool unless `share_train_pool: false`,
              which halves each pool between them (the paper's shape: disjoint SFT and DPO pools)
    test      held out

Sizes: by default each split takes a share of the prompts, decided per prompt by its hash (adding
prompts never moves the others). `test_size` / `fewshot_size` ask for exact numbers of prompts
instead (the paper: 500 test, 5 few-shot): prompts are ranked by the same hash and the lowest go to
test, then few-shot; the rest are split by `val` as before.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

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
    test_size: int | None = Field(None, ge=1, description="exactly this many prompts for testing (overrides `test`)")
    fewshot_size: int | None = Field(None, ge=1, description="exactly this many prompts as few-shot exemplars "
                                     "(overrides `fewshot`)")
    share_train_pool: bool = Field(True, description="SFT and DPO train on the same pool; false halves each pool "
                                   "between them (the paper trains them on disjoint pools)")
    seed: str = Field("persona-ray-v1", description="change to draw other (still deterministic) splits")

    @model_validator(mode="after")
    def _leaves_training_data(self):
        shares = (0 if self.test_size else self.test) + (0 if self.fewshot_size else self.fewshot) + self.val
        if shares >= 1:
            raise ValueError("test + fewshot + val must leave a train pool (sum < 1)")
        return self

    @property
    def exact(self) -> bool:
        return bool(self.test_size or self.fewshot_size)


def _unit(text: str, seed: str) -> float:
    digest = hashlib.sha256(f"{seed}\x1f{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def prompt_key(prompt: str) -> str:
    """The normalised prompt a split is decided by (case and whitespace do not move a prompt)."""
    return " ".join(prompt.lower().split())


def prompt_rank(key: str, cfg: SplitSettings) -> float:
    """Where a prompt ranks in the exact-size draw (lowest first; ties broken by the key)."""
    return _unit(key, cfg.seed)


def _pool_split(key: str, pool: str, cfg: SplitSettings) -> str:
    """sft_<pool>, or with unshared pools sft_/dpo_<pool> by a second hash of the prompt."""
    if cfg.share_train_pool:
        return f"sft_{pool}"  # dpo_<pool> is the same set; written from it
    return f"sft_{pool}" if _unit(key, cfg.seed + "/pool") < 0.5 else f"dpo_{pool}"


@dataclass(frozen=True)
class ExactBounds:
    """Exact sizes as two cut points in the prompts' (rank, key) order: prompts before `test` are
    test, prompts before `fewshot` few-shot. Found once over all distinct prompts, then every row's
    split is decided alone (so a worker can decide it)."""

    test: tuple[float, str]
    fewshot: tuple[float, str]


def exact_bounds(ranked: Iterable[tuple[float, str]], distinct_prompts: int, cfg: SplitSettings) -> ExactBounds:
    """`ranked`: the distinct prompts' (rank, key), in ascending order; only the first
    test + few-shot + 1 are read. Raises ValueError naming the field when too few prompts."""
    test_n = cfg.test_size if cfg.test_size else round(cfg.test * distinct_prompts)
    fewshot_n = cfg.fewshot_size if cfg.fewshot_size else round(cfg.fewshot * distinct_prompts)
    if test_n + fewshot_n >= distinct_prompts:
        field = "test_size" if cfg.test_size else "fewshot_size"
        raise ValueError(f"splits.{field}: {test_n} test + {fewshot_n} few-shot prompts leave no training prompts "
                         f"of {distinct_prompts} distinct ones")
    cuts = {test_n: None, test_n + fewshot_n: None}
    for position, item in enumerate(ranked):
        if position in cuts:
            cuts[position] = tuple(item)
        if position >= test_n + fewshot_n:
            break
    return ExactBounds(test=cuts[test_n], fewshot=cuts[test_n + fewshot_n])


def assign_split(prompt: str, cfg: SplitSettings, bounds: ExactBounds | None = None) -> str:
    """Deterministic split for a prompt (all pairs of one prompt land together): by shares, or
    with exact sizes by `bounds` (required then; see exact_bounds)."""
    key = prompt_key(prompt)
    u = _unit(key, cfg.seed)
    if cfg.exact:
        if bounds is None:
            raise ValueError("exact split sizes need the bounds found over all prompts (exact_bounds)")
        if (u, key) < bounds.test:
            return "test"
        if (u, key) < bounds.fewshot:
            return "fewshot"
        return _pool_split(key, "val" if _unit(key, cfg.seed + "/val") < cfg.val else "train", cfg)
    if u < cfg.test:
        return "test"
    if u < cfg.test + cfg.fewshot:
        return "fewshot"
    return _pool_split(key, "val" if u < cfg.test + cfg.fewshot + cfg.val else "train", cfg)


def split_rows(rows: list[dict], cfg: SplitSettings) -> dict[str, list[dict]]:
    """In-memory splits of rows with `pair_id` and `prompt`, each split in pair id order (the
    augment job decides the same splits with the same functions, distributed)."""
    bounds = None
    if cfg.exact:
        keys = {prompt_key(r["prompt"]) for r in rows}
        bounds = exact_bounds(sorted((prompt_rank(k, cfg), k) for k in keys), len(keys), cfg)
    out: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for row in sorted(rows, key=lambda r: r["pair_id"]):
        out[assign_split(row["prompt"], cfg, bounds)].append(row)
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
