"""Build the persona world: prompts x styles -> responses -> users -> preference pairs -> splits.

    world_prompts()                                           -> the bundled everyday questions
    confirmed_responses(prompts, types, respond)              -> {prompt: {style: response}}
    build_world(responses, types, users_per_prompt, fractions, seed) -> {split: rows}, counts
    write_world(rows_by_split, folder)                        -> the augmented-folder layout

Every prompt needs one response per style, confirmed by the style program (from `respond`, e.g.
synthetic.synthetic_response, or written by a model: write.py); a prompt missing any style is
dropped and counted. Prompts are split first (train / val / test never share a prompt); each
training prompt is then seen by `users_per_prompt` users, each of a type drawn by the types'
shares, and each test prompt by one user of every type. A user's pair is
(chosen = the response in their style, rejected = the response in another type's style), with
the two types' persona sentences as the gold chosen and rejected personas. The same prompt thus
has conflicting preferences across users, as real preference data does.
Rows have the augmented columns (augment.ROW_FIELDS) plus `chosen_type` and `rejected_type`.
"""

from __future__ import annotations

import hashlib
import random
from importlib import resources
from typing import Callable

import pyarrow as pa

from persona_ray.core import storage
from persona_ray.world.spec import PersonaType
from persona_ray.world.style import style_of

Respond = Callable[[str, str], str]
TYPE_FIELDS = ("chosen_type", "rejected_type")


def world_prompts() -> list[str]:
    """The bundled everyday questions (persona_ray/data/world_prompts.txt), one per line."""
    text = resources.files("persona_ray.data").joinpath("world_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def confirmed_responses(prompts: list[str], types: list[PersonaType], respond: Respond) -> dict[str, dict[str, str]]:
    """{prompt: {style: response}} keeping only responses whose style the style program confirms."""
    responses: dict[str, dict[str, str]] = {}
    for prompt in prompts:
        responses[prompt] = {}
        for persona_type in types:
            text = respond(prompt, persona_type.style)
            found = style_of(text)
            if found is not None and found.name == persona_type.style:
                responses[prompt][persona_type.style] = text
    return responses


def _pair(prompt: str, number: int, user: PersonaType, other: PersonaType, responses: dict) -> dict:
    # The id names the prompt by a hash of its text, so a world is the same whatever order its
    # responses were stored in.
    prompt_key = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:10]
    return {"pair_id": f"world-{prompt_key}-{number}", "prompt": prompt, "chosen": responses[user.style],
            "rejected": responses[other.style], "domain": "world", "source": "persona-world",
            "chosen_persona": user.persona, "rejected_persona": other.persona,
            "chosen_type": user.name, "rejected_type": other.name}


def build_world(responses: dict[str, dict[str, str]], types: list[PersonaType], users_per_prompt: int,
                fractions: dict[str, float], seed: int = 0, every_type_in: tuple[str, ...] = ("test",)
                ) -> tuple[dict[str, list[dict]], dict]:
    """({split: pair rows}, counts); see the module docstring.

    Prompts lacking a response in some type's style are dropped (and counted). Prompts are split
    first (split_by_prompt); in the splits named by `every_type_in` each prompt gets one user of
    every type instead of users drawn by share, so every type, the smallest minority included,
    is measured on the same test prompts with the same number of rows.
    """
    complete = [p for p in responses if all(t.style in responses[p] for t in types)]
    rng = random.Random(seed)
    splits = {}
    for split, prompts in split_by_prompt(complete, fractions, seed).items():
        rows = []
        for prompt in prompts:
            if split in every_type_in:
                users = list(types)
            else:
                users = rng.choices(types, weights=[t.share for t in types], k=users_per_prompt)
            for number, user in enumerate(users):
                other = rng.choice([t for t in types if t.name != user.name])
                rows.append(_pair(prompt, number, user, other, responses[prompt]))
        splits[split] = rows
    counts = {"prompts": len(responses), "prompts_kept": len(complete),
              "prompts_dropped": len(responses) - len(complete),
              "pairs": {split: len(rows) for split, rows in splits.items()},
              "prompts_by_split": {split: len({r["prompt"] for r in rows}) for split, rows in splits.items()}}
    return splits, counts


def split_by_prompt(prompts: list[str], fractions: dict[str, float], seed: int = 0) -> dict[str, list[str]]:
    """The prompts, shuffled with `seed` and cut into splits by `fractions` (in order; the last
    split takes what rounding leaves)."""
    order = sorted(set(prompts))
    random.Random(seed).shuffle(order)
    splits, start = {}, 0
    names = list(fractions)
    for number, name in enumerate(names):
        end = len(order) if number == len(names) - 1 else start + round(fractions[name] * len(order))
        splits[name] = order[start:end]
        start = end
    return splits


def write_world(rows_by_split: dict[str, list[dict]], folder: str) -> None:
    """<folder>/<split>.parquet for each split, in the augmented layout training reads (the
    world's `train` rows serve as both sft_train and dpo_train, `val` as both validation splits)."""
    from persona_ray.dataset.augment import ROW_FIELDS

    schema = pa.schema([(name, pa.string()) for name in (*ROW_FIELDS, *TYPE_FIELDS)])
    names = {"train": ("sft_train", "dpo_train"), "val": ("sft_val", "dpo_val")}
    for split, rows in rows_by_split.items():
        table = pa.Table.from_pylist([{f: row[f] for f in schema.names} for row in rows], schema=schema)
        for name in names.get(split, (split,)):
            storage.write_parquet(table, storage.join(folder, f"{name}.parquet"))
