"""The style program: what length and form a response has, decided exactly, blind to who wrote it.

Two axes, each with two values:
    length  short  a one- or two-sentence answer (prose), or two or three steps (steps); <= 45 words
            long   a detailed answer: at least four sentences or four steps, and >= 60 words
    form    steps  two or more lines that start with a number ("1." or "1)")
            prose  no numbered line at all
A text between the two lengths, or with a single numbered line, has no style (None): it is
neither, and counts as compliant with no persona.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NUMBERED_LINE = re.compile(r"^\s*\d{1,2}[.)]\s+\S", re.M)
SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
SHORT_MAX_WORDS = 45
LONG_MIN_WORDS = 60


@dataclass(frozen=True)
class Style:
    length: str  # "short" | "long"
    form: str    # "prose" | "steps"

    @property
    def name(self) -> str:
        return f"{self.length}-{self.form}"


def count_sentences(text: str) -> int:
    return len(SENTENCE_END.findall(text)) or (1 if text.strip() else 0)


def style_of(text: str) -> Style | None:
    """The style of `text`, or None when it has none (see the module docstring)."""
    words = len(text.split())
    steps = len(NUMBERED_LINE.findall(text))
    if steps == 1:
        return None
    form = "steps" if steps >= 2 else "prose"
    units = steps if form == "steps" else count_sentences(text)
    short_units = (2, 3) if form == "steps" else (1, 2)
    if short_units[0] <= units <= short_units[1] and words <= SHORT_MAX_WORDS:
        return Style("short", form)
    if units >= 4 and words >= LONG_MIN_WORDS:
        return Style("long", form)
    return None
