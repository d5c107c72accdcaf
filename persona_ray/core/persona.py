"""Persona text: one set of rules for every place a persona enters the system.

A persona is one sentence, "The user is <attribute> and prefers <explanation>.", written by a
model (PI) or typed by a user (serving). Either way it is untrusted text, and every stage — PI
output, augment, training examples, generation, the judges, serving — checks it here, so a
persona one stage accepts is never refused by another:

    clean_persona(text)       whitespace runs (newlines, \u2028, tabs ...) collapse to one space;
                              PersonaError if it is not text, empty, holds a control character
                              (C0, DEL or C1) or is longer than `max_chars`
    validate_persona(text)    clean_persona + the persona form: opens with "The user", states a
                              preference, at most MAX_WORDS words, ascribes no protected attribute
                              (race, ethnicity, religion, gender, sexual orientation, nationality,
                              age, disability, health status) to the user
    sanitize_for_prompt(text) for showing a persona inside another prompt (the judges): never
                              fails; controls become spaces, <persona> tags are removed, one line
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

LOOSE_OPENER = "The user "  # real PI models also write "The user values / prefers ..."
MAX_WORDS = 80
# C0 and C1 control characters and DEL, plus the Unicode line separators. Whitespace among them
# (\t \n \r \x1c-\x1f \x85 ...) is collapsed first; anything left is refused.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A persona must not be able to close its own delimited field inside a prompt.
_PERSONA_TAG = re.compile(r"<\s*/?\s*persona\s*>", re.IGNORECASE)


class PersonaError(ValueError):
    """A persona that cannot be used; `reason` says why (the message is "persona: <reason>")."""

    def __init__(self, reason: str):
        super().__init__(f"persona: {reason}")
        self.reason = reason


def clean_persona(persona: Any, max_chars: int | None = None) -> str:
    """The persona on one line with single spaces, or PersonaError."""
    if not isinstance(persona, str):
        raise PersonaError(f"must be text, got {type(persona).__name__}")
    text = " ".join(persona.split())
    if not text:
        raise PersonaError("empty")
    if CONTROL.search(text):
        raise PersonaError("contains control characters")
    if max_chars is not None and len(text) > max_chars:
        raise PersonaError(f"{len(text)} characters; the limit is {max_chars}")
    return text


def sanitize_for_prompt(persona: str) -> str:
    """One line of plain text for a delimited prompt field: controls and newlines become spaces,
    persona tags are removed. Never fails: the judges show whatever the model was given."""
    text = CONTROL.sub(" ", persona)
    text = _PERSONA_TAG.sub(" ", text)
    return " ".join(text.split())


# Protected attributes of the user. Each entry: category -> regex alternatives (word-bounded,
# case-insensitive). Only identity words count, not topics: "an advocate for gender equality"
# or "prefers answers on disability law" describe interests, not who the user is.
# They are searched in the attribute part of the persona (before the preference verb), since
# "prefers ways to reach young adults" is about others. Pronouns count anywhere.
# Ambiguous words ("black", "white", "old", "straight", "senior") only count next to a noun
# for a person, so that "black-and-white thinking" or "senior engineer" stay valid.
_PERSON = r"(?:person|people|man|men|woman|women|user|individual|adult|community|american|citizen)s?"
_PROTECTED = {
    "race or ethnicity": [
        rf"(?:black|white|brown) {_PERSON}",
        r"african[- ]american", r"asian", r"african", r"hispanic", r"latin[oax]s?", r"caucasian",
        r"arab", r"native american", r"indigenous",
    ],
    "religion": [
        r"christians?", r"muslims?", r"jew(?:s|ish)?", r"hindus?", r"buddhists?", r"atheists?",
        r"catholics?", r"protestants?", r"mormons?", r"sikhs?", r"evangelical", r"devout",
        r"islamic", r"agnostic", rf"religious {_PERSON}",
    ],
    "gender": [
        r"m[ae]n(?!'s)", r"wom[ae]n(?!'s)", r"male", r"female", r"girls?", r"boys?", r"mothers?", r"fathers?",
        r"moms?", r"dads?", r"husbands?", r"wife", r"wives", r"boyfriends?", r"girlfriends?",
        r"ladies", r"lady", r"gentlem[ae]n", r"transgender", r"non-?binary", r"he", r"she", r"his",
        r"him", r"her", r"hers", r"herself", r"himself",
    ],
    "sexual orientation": [
        r"gay", r"lesbians?", r"bisexual", r"heterosexual", r"homosexual", r"queer", r"lgbtq?\+?",
        rf"straight {_PERSON}",
    ],
    "nationality": [
        r"americans?", r"british", r"english(?=\s+(?:person|man|woman|citizen))", r"canadians?",
        r"mexicans?", r"chinese", r"indians?", r"japanese", r"koreans?", r"french", r"germans?",
        r"italians?", r"spanish", r"russians?", r"brazilians?", r"australians?", r"nigerians?",
        r"europeans?", r"irish", r"scottish", r"pakistanis?", r"filipinos?", r"vietnamese",
        r"immigrants?", r"foreigners?",
    ],
    "age": [
        r"young", r"younger", r"youth", r"elderly", r"aged?", r"aging", r"older",
        rf"old {_PERSON}", r"\d+[- ]years?[- ]old", r"years old", rf"senior {_PERSON}", r"seniors",
        r"senior citizens?", r"teen(?:ager)?s?", r"adolescents?", r"child(?:ren)?", r"kids?",
        r"retirees?", r"retired", r"middle-aged", r"millennials?", r"boomers?", r"gen z",
    ],
    "disability": [
        r"disabled", r"handicapped", r"blind", r"deaf", r"wheelchair",
        r"autis(?:m|tic)", r"dyslexi[ac]", r"impaired",
    ],
    "health status": [
        r"diabetic", r"diabetes", r"pregnan(?:t|cy)", r"hiv", r"adhd", r"depress(?:ed|ion)",
        r"bipolar", r"schizophreni[ac]", r"chronic(?:ally)? ill(?:ness)?", r"illness",
        r"(?:cancer|hospital|medical|psychiatric) patients?",
    ],
}
_PROTECTED_RE = {
    category: re.compile(r"\b(?:" + "|".join(words) + r")\b", re.IGNORECASE)
    for category, words in _PROTECTED.items()
}
_GENDERED_PRONOUN = re.compile(r"\b(?:he|she|his|him|her|hers|himself|herself)\b", re.IGNORECASE)
_PREFERENCE_VERB = re.compile(
    r"\b(?:prefer\w*|valu(?:e|es|ing)|prioriti\w+|favou?r\w*|appreciat\w+|seek\w*|want\w*)\b",
    re.IGNORECASE,
)


def find_protected(persona: str) -> tuple[str, str] | None:
    """First protected attribute the persona ascribes to the user, as (category, word)."""
    verb = _PREFERENCE_VERB.search(persona)
    attribute_part = persona[: verb.start()] if verb else persona
    for category, pattern in _PROTECTED_RE.items():
        match = pattern.search(attribute_part)
        if match:
            return category, match.group(0)
    pronoun = _GENDERED_PRONOUN.search(persona)
    return ("gender", pronoun.group(0)) if pronoun else None


@dataclass(frozen=True)
class ParsedPersona:
    persona: str  # "" when invalid
    valid: bool
    reason: str  # "" when valid


def _invalid(reason: str) -> ParsedPersona:
    return ParsedPersona("", False, reason)


def validate_persona(sentence: Any) -> ParsedPersona:
    """Check one persona sentence (from a model or typed by a user) against the persona rules."""
    try:
        sentence = clean_persona(sentence)
    except PersonaError as exc:
        return _invalid(exc.reason)
    if not sentence.lower().startswith(LOOSE_OPENER.lower()):
        return _invalid("does not start with 'The user'")
    if not _PREFERENCE_VERB.search(sentence):
        return _invalid("no preference stated (expected e.g. 'prefers', 'values')")
    if len(sentence.split()) > MAX_WORDS:
        return _invalid(f"longer than {MAX_WORDS} words")
    protected = find_protected(sentence)
    if protected:
        return _invalid(f"mentions a protected attribute ({protected[0]}: '{protected[1]}')")
    if not sentence.endswith("."):
        sentence += "."
    return ParsedPersona("T" + sentence[1:], True, "")
