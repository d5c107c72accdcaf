"""Persona text: the guided-decoding pattern, the lenient parser and the content validator.

A persona is one sentence: "The user is <attribute> and prefers <explanation>."
Personas come from users and models, so everything here treats them as untrusted text:
they are length-bounded, control characters are refused, and protected attributes
(race, ethnicity, religion, gender, sexual orientation, nationality, age, disability,
health status) make a persona invalid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OPENER = "The user is "
LOOSE_OPENER = "The user "  # real PI models also write "The user values / prefers ..."
MAX_WORDS = 80

# Characters a guided persona may use: no period (the single period ends the sentence),
# no newline, no markup.
_GUIDED_CHARS = r"[A-Za-z0-9 ,;:'()/&%+\-]"


def guided_regex(max_attribute_chars: int = 120, max_preference_chars: int = 240) -> str:
    """Regex for structured outputs: every output matching it parses as a valid-form persona."""
    return (
        f"The user is {_GUIDED_CHARS}{{3,{max_attribute_chars}}}"
        f" and prefers {_GUIDED_CHARS}{{3,{max_preference_chars}}}\\."
    )


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
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


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


def validate_persona(sentence: str) -> ParsedPersona:
    """Check one persona sentence (from a model or typed by a user)."""
    if not isinstance(sentence, str):
        return _invalid(f"persona must be text, got {type(sentence).__name__}")
    sentence = " ".join(sentence.split())
    if not sentence:
        return _invalid("empty persona")
    if _CONTROL.search(sentence):
        return _invalid("control characters in persona")
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


def parse_persona(text: str | None, truncated: bool = False) -> ParsedPersona:
    """Leniently pull the persona sentence out of raw model text.

    Takes the first "The user ..." and cuts it at the first sentence end or newline.
    `truncated` (the engine stopped at max_tokens) invalidates a sentence with no end.
    """
    if text is None or not text.strip():
        return _invalid("empty output")
    start = text.lower().find(LOOSE_OPENER.lower().strip())
    if start < 0:
        return _invalid("no 'The user ...' sentence in output")
    rest = text[start:].split("\n", 1)[0]
    end = re.search(r"\.(?=\s|$)", rest)
    if end:
        rest = rest[: end.end()]
    elif truncated:
        return _invalid("output truncated before the sentence ended")
    return validate_persona(rest)
