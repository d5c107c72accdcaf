"""Reading a persona out of a PI model's text: the guided-decoding pattern, the lenient parser,
and whether the persona copies an exemplar its prompt showed.

Whatever is parsed is then checked by the shared persona rules (persona_ray.core.persona); the PI
job then runs the parsed batch through the persona gate's embedding check
(persona_ray.core.persona_gate) and flags exemplar copies (`copies_exemplar`).
"""

from __future__ import annotations

import re
from functools import lru_cache

from persona_ray.core.persona import LOOSE_OPENER, ParsedPersona, near_copy, validate_persona
from persona_ray.inference.prompt import shown_exemplars

OPENER = "The user is "

# Characters a guided persona may use: no period (the single period ends the sentence),
# no newline, no markup.
_GUIDED_CHARS = r"[A-Za-z0-9 ,;:'()/&%+\-]"


def guided_regex(max_attribute_chars: int = 120, max_preference_chars: int = 240) -> str:
    """Regex for structured outputs: every output matching it parses as a valid-form persona."""
    return (
        f"The user is {_GUIDED_CHARS}{{3,{max_attribute_chars}}}"
        f" and prefers {_GUIDED_CHARS}{{3,{max_preference_chars}}}\\."
    )


def parse_persona(text: str | None, truncated: bool = False) -> ParsedPersona:
    """Leniently pull the persona sentence out of raw model text.

    Takes the first "The user ..." and cuts it at the first sentence end or newline.
    `truncated` (the engine stopped at max_tokens) invalidates a sentence with no end.
    """
    if text is None or not text.strip():
        return ParsedPersona("", False, "empty output")
    start = text.lower().find(LOOSE_OPENER.lower().strip())
    if start < 0:
        return ParsedPersona("", False, "no 'The user ...' sentence in output")
    rest = text[start:].split("\n", 1)[0]
    end = re.search(r"\.(?=\s|$)", rest)
    if end:
        rest = rest[: end.end()]
    elif truncated:
        return ParsedPersona("", False, "output truncated before the sentence ended")
    return validate_persona(rest)


@lru_cache(maxsize=None)
def shown_exemplar_personas(domain: str, k_shot: int, exemplar_path: str | None = None) -> tuple[str, ...]:
    """The personas of the exemplars a PI prompt for `domain` shows at `k_shot` (prompt.shown_exemplars)."""
    return tuple(shot.persona for shot in shown_exemplars(domain, k_shot, exemplar_path))


def copies_exemplar(persona: str, domain: str, k_shot: int, exemplar_path: str | None = None) -> bool:
    """True when `persona` is a near copy (core.persona.near_copy) of an exemplar persona its PI
    prompt showed. A copy is a valid persona that says nothing about its pair, so it is flagged,
    not refused; with k_shot 0 nothing is shown and nothing is flagged."""
    return bool(persona) and any(near_copy(persona, shown)
                                 for shown in shown_exemplar_personas(domain, k_shot, exemplar_path))
