"""Build the persona world: prompts x styles -> responses -> users -> preference pairs -> splits.

    world_prompts()                                              -> the bundled everyday questions
    build_world(prompts, types, respond, users_per_prompt, seed) -> rows, counts
    split_by_prompt(rows, fractions, seed)                       -> {split: rows}
    write_world(rows_by_split, folder)                           -> the augmented-folder layout

Every prompt gets one response per style (`respond(prompt, style)`; kept only when the style
program confirms it, so a prompt missing any style is dropped and counted). Each prompt is then
seen by `users_per_prompt` users, each of a type drawn by the types' shares; a user's pair is
(chosen = the response in their style, rejected = the response in another type's style), with
the two types' persona sentences as the gold chosen and rejected personas. The same prompt thus
has conflicting preferences across users, as real preference data does.
Rows have the augmented columns (augment.ROW_FIELDS) plus `chosen_type` and `rejected_type`.
"""

from __future__ import annotations

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


def responses_in_every_style(prompt: str, types: list[PersonaType], respond: Respond) -> dict[str, str] | None:
    """{style: response} for one prompt, or None when some style could not be confirmed."""
    responses = {}
    for persona_type in types:
        text = respond(prompt, persona_type.style)
        found = style_of(text)
        if found is None or found.name != persona_type.style:
            return None
        responses[persona_type.style] = text
    return responses


def build_world(prompts: list[str], types: list[PersonaType], respond: Respond, users_per_prompt: int,
                seed: int = 0) -> tuple[list[dict], dict]:
    """(pair rows, counts) for the prompts; see the module docstring."""
    rows, dropped = [], 0
    rng = random.Random(seed)
    for index, prompt in enumerate(prompts):
        responses = responses_in_every_style(prompt, types, respond)
        if responses is None:
            dropped += 1
            continue
        users = rng.choices(types, weights=[t.share for t in types], k=users_per_prompt)
        for number, user in enumerate(users):
            other = rng.choice([t for t in types if t.name != user.name])
            rows.append({
                "pair_id": f"world-{index:05d}-{number}", "prompt": prompt, "chosen": responses[user.style],
                "rejected": responses[other.style], "domain": "world", "source": "persona-world",
                "chosen_persona": user.persona, "rejected_persona": other.persona,
                "chosen_type": user.name, "rejected_type": other.name,
            })
    counts = {"prompts": len(prompts), "prompts_kept": len(prompts) - dropped, "prompts_dropped": dropped,
              "pairs": len(rows)}
    return rows, counts


def split_by_prompt(rows: list[dict], fractions: dict[str, float], seed: int = 0) -> dict[str, list[dict]]:
    """Rows grouped by prompt into splits (a prompt's rows never cross splits)."""
    prompts = sorted({row["prompt"] for row in rows})
    random.Random(seed).shuffle(prompts)
    names, bounds, start = list(fractions), {}, 0.0
    for name in names:
        bounds[name] = (start, start + fractions[name])
        start += fractions[name]
    assignment = {}
    for i, prompt in enumerate(prompts):
        position = i / len(prompts)
        assignment[prompt] = next((n for n in names if bounds[n][0] <= position < bounds[n][1]), names[-1])
    return {name: [row for row in rows if assignment[row["prompt"]] == name] for name in names}


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
