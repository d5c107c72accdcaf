"""Responses in every style without a model: sentences from a small bank, arranged by style.

For the CI-scale world (the tiny model): the words are few and plain, so a 1 M-parameter model can
learn them in minutes, and only the style differs between a prompt's responses. The real-language
world has the `smollm2` model write the responses instead (write.py).
"""

from __future__ import annotations

import hashlib

BANK = [
    "Start with the simplest thing you can check and see whether it already solves the problem",
    "Keep a short note of what you tried so you do not repeat the same step twice",
    "Use the tools you already have before you buy anything new for the job",
    "Ask someone who has done it before because a quick tip can save you an hour",
    "Give it a few days and look again before you decide that it did not work",
    "Set a small goal for today and a bigger one for the end of the month",
    "Read the label or the manual first since most answers are written there",
    "Clean up as you go so the last part of the task is as easy as the first",
]
SHORT = [
    "Check the simplest cause first",
    "Use what you already have",
    "Keep a short note of each try",
    "Ask someone who has done it",
    "Look again after a few days",
    "Read the label first",
]


def _pick(prompt: str, pool: list[str], count: int, salt: str) -> list[str]:
    """`count` sentences of `pool`, chosen and ordered by the prompt (deterministic)."""
    order = sorted(range(len(pool)), key=lambda i: hashlib.sha256(f"{salt}|{prompt}|{i}".encode()).hexdigest())
    return [pool[i] for i in order[:count]]


def synthetic_response(prompt: str, style: str) -> str:
    """A response to `prompt` in `style` ("short-prose", "long-steps", ...), confirmed by style_of."""
    if style == "long-prose":
        return " ".join(f"{s}." for s in _pick(prompt, BANK, 5, style))
    if style == "short-prose":
        return " ".join(f"{s}." for s in _pick(prompt, SHORT, 2, style))
    if style == "long-steps":
        return "\n".join(f"{i}. {s}." for i, s in enumerate(_pick(prompt, BANK, 5, style), start=1))
    if style == "short-steps":
        return "\n".join(f"{i}. {s}." for i, s in enumerate(_pick(prompt, SHORT, 3, style), start=1))
    raise ValueError(f"unknown style {style!r}")
