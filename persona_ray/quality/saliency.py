"""Persona diagnostics: which words separate chosen-response personas from rejected ones.

Input is plain persona sentences ("The user is <attribute> and prefers <explanation>."),
one list per label. Nothing here needs Ray or a model.

- `preference_part` strips the opener and whatever the user is said to prefer *against*
  ("... rather than X", "... over X"), so X does not count as a preferred trait.
- `persona_words` turns that part into a set of lowercase lemmatised content words.
- `word_saliency` ranks words by P(label | word), class-balanced (each label's counts are
  divided by its number of personas), over words seen in at least `min_count` personas.
- `top_traits` counts the content words of the attribute part (who the user is).

Lemmatisation: `simplemma` (English). Hyphenated words ("step-by-step") are kept whole,
and words ending in "-ed" are kept as written: in personas they are adjectives
("detailed", "nuanced", "balanced"), and reducing them to verbs would merge
"detailed" with "detail".
"""

from __future__ import annotations

import re
from collections import Counter

import simplemma

from persona_ray.core.persona import PREFERENCE_VERBS
from persona_ray.core.schema import SIDES

_OPENER = re.compile(r"^\s*the user(?:\s+is)?\b\s*", re.IGNORECASE)
# What follows a contrast marker is what the user does NOT prefer. Markers need spaces on
# both sides, so "overly" or "overview" never cut.
CONTRAST_MARKERS = (" rather than ", " over ", " instead of ", " as opposed to ", " versus ", " vs ")
_CONTRAST = re.compile("|".join(re.escape(m) for m in CONTRAST_MARKERS), re.IGNORECASE)
# Where the attribute part ends: the first preference verb, or "who" ("an individual who ...").
_PREFERENCE_VERB = re.compile(rf"\b(?:who|{PREFERENCE_VERBS})\b", re.IGNORECASE)
# Lowercase words, hyphenated compounds kept together; apostrophes split ("user's" -> user, s).
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")

# Function words, plus the boilerplate every persona shares (opener, preference verbs,
# "individual", "response") that says nothing about what distinguishes one.
STOPWORDS = frozenset(
    """
    a an the and or but nor so yet if then than as of to in on at by for from with without into
    onto about above below between through during before after under again further once also
    while whilst when where why how what which who whom whose that this these those there here
    is are was were be been being am do does did doing have has had having can could should would
    may might must will shall not no only own same too very just more most less least much many
    some any all both each few other such it its they them their theirs themselves he she his
    her we our you your i me my one ones s t
    overly highly rather quite especially particularly really
    user users individual individuals person people someone likely generally often usually
    prefer prefers preferred preferring preference preferences value values valuing
    prioritize prioritizes prioritizing prioritise prioritises prioritising favor favors
    favoring favour favours favouring appreciate appreciates appreciating seek seeks seeking
    want wants wanting like likes liking tend tends
    response responses answer answers reply replies information info
    """.split()
)


def preference_part(persona: str) -> str:
    """The persona without its opener and without what the user prefers *against*.

    "The user is busy and prefers concise answers over detailed ones."
    -> "busy and prefers concise answers"
    """
    text = _OPENER.sub("", " ".join(persona.split()), count=1)
    text = _CONTRAST.split(text, maxsplit=1)[0]
    return text.strip().rstrip(".").strip()


def _lemma(word: str) -> str:
    # Compounds and "-ed" adjectives stay as written (simplemma turns "nuanced" into "nuance").
    if "-" in word or word.endswith("ed"):
        return word
    return simplemma.lemmatize(word, lang="en").lower()


def _content_words(text: str) -> list[str]:
    """Lemmatised content words of `text`, each once, in order of first appearance."""
    seen: dict[str, None] = {}
    for token in _WORD.findall(text.lower()):
        if token in STOPWORDS or len(token) < 2:
            continue
        lemma = _lemma(token)
        if lemma not in STOPWORDS:
            seen.setdefault(lemma, None)
    return list(seen)


def persona_words(persona: str) -> list[str]:
    """Content words of `preference_part(persona)`: lowercase, lemmatised, each once."""
    return _content_words(preference_part(persona))


def attribute_part(persona: str) -> str:
    """Who the user is: after the opener, before the first preference verb or "who"."""
    text = _OPENER.sub("", " ".join(persona.split()), count=1)
    verb = _PREFERENCE_VERB.search(text)
    return (text[: verb.start()] if verb else text).strip(" ,.")


def word_saliency(
    chosen: list[str], rejected: list[str], min_count: int = 5, top_k: int = 15
) -> dict[str, list[dict]]:
    """Top words per label by class-balanced P(label | word).

    For a word w in >= `min_count` personas (both labels together):
        rate_L = (#personas of label L containing w) / (#personas of label L)
        P(L | w) = rate_L / (rate_chosen + rate_rejected)
    Returns {"chosen": [...], "rejected": [...]}; each item is
    {"word", "p_label", "count_chosen", "count_rejected"}, sorted by p_label desc,
    then total count desc, then word.
    """
    counts = {
        "chosen": Counter(w for p in chosen for w in persona_words(p)),
        "rejected": Counter(w for p in rejected for w in persona_words(p)),
    }
    sizes = {"chosen": len(chosen), "rejected": len(rejected)}
    words = [w for w in counts["chosen"] | counts["rejected"]
             if counts["chosen"][w] + counts["rejected"][w] >= min_count]

    def rate(label: str, word: str) -> float:
        return counts[label][word] / sizes[label] if sizes[label] else 0.0

    result: dict[str, list[dict]] = {}
    for label in SIDES:
        rows = []
        for w in words:
            total_rate = rate("chosen", w) + rate("rejected", w)
            rows.append({
                "word": w,
                "p_label": rate(label, w) / total_rate,  # total_rate > 0: w was counted
                "count_chosen": counts["chosen"][w],
                "count_rejected": counts["rejected"][w],
            })
        rows.sort(key=lambda r: (-r["p_label"], -(r["count_chosen"] + r["count_rejected"]), r["word"]))
        result[label] = rows[:top_k]
    return result


def top_traits(personas: list[str], top_k: int = 20) -> list[dict]:
    """Most frequent attribute words ("detail-oriented", "practical"), each counted once
    per persona, as [{"trait", "count"}] sorted by count desc, then trait."""
    counts = Counter(w for p in personas for w in _content_words(attribute_part(p)))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [{"trait": t, "count": c} for t, c in ranked[:top_k]]
