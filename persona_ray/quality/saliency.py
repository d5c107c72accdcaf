"""Persona diagnostics: which words separate chosen-response personas from rejected ones.

Input is plain persona sentences ("The user is <attribute> and prefers <explanation>."),
one list per label. Nothing here needs Ray or a model.

- `preference_part` strips the opener and whatever the user is said to prefer *against*
  ("... rather than X", "... over X"), so X does not count as a preferred trait.
- `persona_words` turns that part into a set of lowercase lemmatised content words.
- `word_saliency` ranks words seen in at least `min_count` personas, by one of two statistics:
  `log_odds` (default): the weighted log-odds ratio with an informative Dirichlet prior, as a
  z-score (Monroe, Colaresi & Quinn 2008, "Fightin' Words") — frequent, clearly one-sided
  words rank above rare ones whose few occurrences happen to fall on one side;
  `p_label` (the paper's statistic): class-balanced P(label | word), each label's counts
  divided by its number of personas (the paper: at least 10 personas, top 10).
- `top_traits` counts the content words of the attribute part (who the user is).

Lemmatisation: `simplemma` (English). Hyphenated words ("step-by-step") are kept whole,
and words ending in "-ed" are kept as written: in personas they are adjectives
("detailed", "nuanced", "balanced"), and reducing them to verbs would merge
"detailed" with "detail".
"""

from __future__ import annotations

import math
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


SALIENCY_METHODS = ("log_odds", "p_label")


def _log_odds_z(counts: dict[str, Counter]) -> dict[str, float]:
    """z-score of the chosen-vs-rejected log-odds of every word, with the pooled counts as an
    informative Dirichlet prior (alpha_w = pooled count of w, alpha_0 = their sum):

        delta_w = log((y_cw + a_w) / (n_c + a_0 - y_cw - a_w)) - log((y_rw + a_w) / (n_r + a_0 - y_rw - a_w))
        z_w = delta_w / sqrt(1 / (y_cw + a_w) + 1 / (y_rw + a_w))

    y = personas of a label containing the word, n = the sum of y over the label's words.
    Positive: marks chosen personas; negative: rejected ones."""
    pooled = counts["chosen"] + counts["rejected"]
    if len(pooled) < 2:  # one word has no odds against the others
        return {word: 0.0 for word in pooled}
    a0 = sum(pooled.values())
    n_c, n_r = sum(counts["chosen"].values()), sum(counts["rejected"].values())
    z = {}
    for word, a in pooled.items():
        y_c, y_r = counts["chosen"][word], counts["rejected"][word]
        delta = math.log((y_c + a) / (n_c + a0 - y_c - a)) - math.log((y_r + a) / (n_r + a0 - y_r - a))
        z[word] = delta / math.sqrt(1 / (y_c + a) + 1 / (y_r + a))
    return z


def word_saliency(
    chosen: list[str], rejected: list[str], min_count: int = 5, top_k: int = 15, method: str = "log_odds",
) -> dict[str, list[dict]]:
    """Top words per label, over words in >= `min_count` personas (both labels together).

    Both statistics are computed for every word; `method` picks the ranking:
        p_label   class-balanced P(L | w) = rate_L / (rate_chosen + rate_rejected),
                  rate_L = (#personas of label L containing w) / (#personas of label L)
        log_odds  the weighted log-odds z-score (`_log_odds_z`), + for chosen, - for rejected
    Returns {"chosen": [...], "rejected": [...]}; each item is {"word", "score", "method",
    "p_label", "z", "count_chosen", "count_rejected"} (score = the ranked statistic for that
    label), sorted by score desc, then total count desc, then word.
    """
    if method not in SALIENCY_METHODS:
        raise ValueError(f"saliency method {method!r}: use one of {', '.join(SALIENCY_METHODS)}")
    counts = {
        "chosen": Counter(w for p in chosen for w in persona_words(p)),
        "rejected": Counter(w for p in rejected for w in persona_words(p)),
    }
    sizes = {"chosen": len(chosen), "rejected": len(rejected)}
    words = [w for w in counts["chosen"] | counts["rejected"]
             if counts["chosen"][w] + counts["rejected"][w] >= min_count]
    z = _log_odds_z(counts)

    def rate(label: str, word: str) -> float:
        return counts[label][word] / sizes[label] if sizes[label] else 0.0

    result: dict[str, list[dict]] = {}
    for label in SIDES:
        sign = 1.0 if label == "chosen" else -1.0
        rows = []
        for w in words:
            p_label = rate(label, w) / (rate("chosen", w) + rate("rejected", w))  # > 0: w was counted
            rows.append({
                "word": w,
                "score": p_label if method == "p_label" else sign * z[w],
                "method": method,
                "p_label": p_label,
                "z": z[w],
                "count_chosen": counts["chosen"][w],
                "count_rejected": counts["rejected"][w],
            })
        rows.sort(key=lambda r: (-r["score"], -(r["count_chosen"] + r["count_rejected"]), r["word"]))
        result[label] = rows[:top_k]
    return result


def top_traits(personas: list[str], top_k: int = 20) -> list[dict]:
    """Most frequent attribute words ("detail-oriented", "practical"), each counted once
    per persona, as [{"trait", "count"}] sorted by count desc, then trait."""
    counts = Counter(w for p in personas for w in _content_words(attribute_part(p)))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [{"trait": t, "count": c} for t, c in ranked[:top_k]]
