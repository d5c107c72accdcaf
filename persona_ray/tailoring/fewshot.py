"""Few-shot persona tailoring (PT-fs): k exemplars (prompt, persona, response), then the query.

Exemplars come from the `fewshot` split (augmented rows; each gives its prompt, chosen persona
and chosen response). Choice of exemplars:
    fixed    the same k for every query of a domain (stable order by pair id), so engines with
             prefix caching share the exemplar prefix
    nearest  the k exemplars whose prompts are most similar to the query, from any retriever
             with `search(text, k) -> list[row]`; LexicalRetriever is the built-in one (word
             overlap), and the ColBERT retriever fits the same protocol

The query and every exemplar use the PT template of pt_templates, so a few-shot base model sees
exactly the format a tailored model is trained on. Without a persona (the no-persona twin of
PT-fs, the baseline the paper compares it with) the same exemplars are shown without their
Persona lines, so the two prompts differ only by the personas.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Protocol

from persona_ray.tailoring.templates import format_input

_WORD = re.compile(r"[a-z0-9']+")


class Retriever(Protocol):
    def search(self, text: str, k: int) -> list[dict]: ...


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class LexicalRetriever:
    """TF-IDF cosine over prompt words: a small, dependency-free `nearest` retriever."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        docs = [Counter(_words(r["prompt"])) for r in rows]
        df = Counter(word for doc in docs for word in doc)
        self.idf = {w: math.log((1 + len(rows)) / (1 + n)) + 1 for w, n in df.items()}
        self.vectors = [self._vector(doc) for doc in docs]

    def _vector(self, counts: Counter) -> dict[str, float]:
        vec = {w: c * self.idf.get(w, 0.0) for w, c in counts.items()}
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        return {w: v / norm for w, v in vec.items()}

    def search(self, text: str, k: int) -> list[dict]:
        query = self._vector(Counter(_words(text)))
        scores = [sum(query.get(w, 0.0) * v for w, v in vec.items()) for vec in self.vectors]
        order = sorted(range(len(self.rows)), key=lambda i: (-scores[i], self.rows[i]["pair_id"]))
        return [self.rows[i] for i in order[:k]]


def fixed_exemplars(fewshot: list[dict], k: int, domain: str | None = None) -> list[dict]:
    """k exemplars, from the query's domain first, in a stable order."""
    ordered = sorted(fewshot, key=lambda r: r["pair_id"])
    same = [r for r in ordered if domain is not None and r.get("domain") == domain]
    other = [r for r in ordered if r not in same]
    return (same + other)[:k]


def build_fewshot_prompt(exemplars: list[dict], prompt: str, persona: str | None) -> str:
    """Exemplar blocks ("Prompt/Persona/Response: <chosen response>"), a blank line between
    them, then the query's template ending in "Response:". With `persona=None` neither the
    exemplars nor the query carry a Persona line."""
    blocks = [f"{format_input(ex['prompt'], ex['chosen_persona'] if persona is not None else None)} "
              f"{ex['chosen'].strip()}" for ex in exemplars]
    return "\n\n".join([*blocks, format_input(prompt, persona)])


def fewshot_prompt(fewshot: list[dict], k: int, prompt: str, persona: str | None, *, strategy: str = "fixed",
                   domain: str | None = None, retriever: Retriever | None = None) -> str:
    if strategy == "fixed":
        exemplars = fixed_exemplars(fewshot, k, domain)
    elif strategy == "nearest":
        exemplars = (retriever or LexicalRetriever(fewshot)).search(prompt, k)
    else:
        raise ValueError(f"strategy must be 'fixed' or 'nearest', got {strategy!r}")
    return build_fewshot_prompt(exemplars, prompt, persona)
