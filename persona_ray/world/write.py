"""A real model writes the world's responses: one per (prompt, style), kept only when confirmed.

    write_responses(prompts, types, writing) -> ({prompt: {style: text}}, counts)

Each (prompt, style) is asked once greedily, with the style's instruction after the question (the
model answers through its chat template). An answer the style program (style.py) does not confirm
is asked again with sampling, up to `writing.retries` rounds (a new seed each round). An answer
cut by the token limit is trimmed to its last whole sentence or step before it is checked, so a
long answer is not lost for running a few words over. Counts per style say how many were asked,
kept, and in which round.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

from persona_ray.core.settings import Settings
from persona_ray.engines.settings import EngineSettings, SamplingSettings
from persona_ray.world.spec import PersonaType
from persona_ray.world.style import style_of

STYLE_INSTRUCTIONS = {
    "long-prose": "Answer in one paragraph of four or five full sentences. Do not use a list or numbers.",
    "short-prose": "Answer in one short sentence.",
    "long-steps": "Answer as a numbered list of four or five steps, one short sentence each, each step on its "
                  "own line. Write only the list.",
    "short-steps": "Answer as a numbered list of exactly three steps of a few words each, each step on its own "
                   "line. Write only the list.",
}
LAST_WHOLE = re.compile(r"^(.*[.!?])[^.!?]*$", re.S)


class WritingSettings(Settings):
    """How the model writes the world's responses."""

    engine: EngineSettings = Field(
        EngineSettings(model="smollm2", prompt_format="chat", sampling=SamplingSettings(max_tokens=160, stop=[])),
        description="the writer model and its engine (greedy first round)")
    retries: int = Field(4, ge=0, description="rounds that re-ask unconfirmed (prompt, style) with sampling")
    retry_temperature: float = Field(0.8, ge=0, description="sampling temperature of the re-ask rounds")


def trim_cut_answer(text: str, finish_reason: str) -> str:
    """An answer cut by the token limit, back to its last whole sentence or step."""
    text = text.strip()
    if finish_reason != "length":
        return text
    lines = text.splitlines()
    if len(lines) > 1 and not re.search(r"[.!?]\s*$", lines[-1]):
        text = "\n".join(lines[:-1]).strip()  # a list: drop the unfinished step
    match = LAST_WHOLE.match(text)
    return match.group(1).strip() if match else ""


def writing_request(prompt: str, style: str) -> str:
    return f"{prompt}\n\n{STYLE_INSTRUCTIONS[style]}"


def write_responses(prompts: list[str], types: list[PersonaType], writing: WritingSettings) -> tuple[dict, dict]:
    """({prompt: {style: confirmed text}}, {style: {"asked", "kept", "kept_by_round"}})."""
    import ray.data

    from persona_ray.core.ray_runtime import ensure_ray

    styles = [t.style for t in types]
    unknown = [s for s in styles if s not in STYLE_INSTRUCTIONS]
    if unknown:
        raise ValueError(f"no writing instruction for style(s) {unknown}; known: {sorted(STYLE_INSTRUCTIONS)}")
    ensure_ray()
    confirmed: dict[str, dict[str, str]] = {prompt: {} for prompt in prompts}
    counts: dict[str, Any] = {s: {"asked": len(prompts), "kept": 0, "kept_by_round": []} for s in styles}
    pending = [(prompt, style) for prompt in prompts for style in styles]
    for attempt in range(writing.retries + 1):
        if not pending:
            break
        sampling = writing.engine.sampling
        if attempt:
            sampling = sampling.model_copy(update={"temperature": writing.retry_temperature, "seed": attempt})
        rows = [{"prompt": writing_request(p, s), "question": p, "style": s} for p, s in pending]
        kept_now = {s: 0 for s in styles}
        for row in writing.engine.generate(ray.data.from_items(rows), sampling=sampling).iter_rows():
            text = trim_cut_answer(row["generated_text"] or "", row["finish_reason"])
            found = style_of(text) if text and not row["error"] else None
            if found is not None and found.name == row["style"]:
                confirmed[row["question"]][row["style"]] = text
                kept_now[row["style"]] += 1
        for style in styles:
            counts[style]["kept"] += kept_now[style]
            counts[style]["kept_by_round"].append(kept_now[style])
        pending = [(p, s) for p, s in pending if s not in confirmed[p]]
    return confirmed, counts
