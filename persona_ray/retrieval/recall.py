"""Measuring a persona retriever: reworded queries and recall@k.

A reworded query drops about a fifth of the words of an indexed prompt and swaps two
neighbouring words: a user asking "the same thing" in other words. recall@k is the share of
reworded queries whose source row is among the top k hits.

Also builds evaluation corpora from real text (prompts, personas, response sentences), so tests
and benchmarks measure on messy language rather than on generated strings.
"""

from __future__ import annotations

import random
import re
import zlib
from typing import Callable

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
CLAUSE_END = re.compile(r"[,;:]\s+|(?<=[.!?])\s+")


def reword(text: str, seed: int = 0, drop: float = 0.2) -> str:
    """Deterministic rewording: drop words (keeping at least 3) and swap one neighbouring pair."""
    rng = random.Random(zlib.crc32(text.encode()) ^ seed)
    words = text.split()
    kept = [w for w in words if rng.random() >= drop]
    if len(kept) < 3:
        kept = words[:3]
    if len(kept) >= 2:
        i = rng.randrange(len(kept) - 1)
        kept[i], kept[i + 1] = kept[i + 1], kept[i]
    return " ".join(kept)


def recall_at(search: Callable[[str, int], list[dict]], targets: list[tuple[str, str]],
              ks: tuple[int, ...] = (1, 10)) -> dict[int, float]:
    """targets: (query, expected row_id); search(query, k) returns hits with "row_id", best first."""
    if not targets:
        raise ValueError("recall needs at least one query")
    found = {k: 0 for k in ks}
    for query, expected in targets:
        ids = [hit["row_id"] for hit in search(query, max(ks))]
        for k in ks:
            found[k] += expected in ids[:k]
    return {k: found[k] / len(targets) for k in ks}


def corpus_rows(persona_rows: list[dict], extra_texts: list[str], size: int) -> list[dict]:
    """Up to `size` index rows with distinct texts: the real prompts first, then personas, then
    sentences of `extra_texts` (e.g. responses), then their clauses. Every row carries the
    personas of a real row."""
    texts: list[str] = []
    seen: set[str] = set()

    def add(text: str) -> None:
        text = " ".join(text.split())
        if text and text not in seen and len(text.split()) >= 4:
            seen.add(text)
            texts.append(text)

    for row in persona_rows:
        add(row["prompt"])
    for field in ("chosen_persona", "rejected_persona", "retr_chosen_persona", "retr_rejected_persona"):
        for row in persona_rows:
            if isinstance(row.get(field), str):
                add(row[field])
    for splitter in (SENTENCE_END, CLAUSE_END):  # clauses only when sentences are not enough
        for text in extra_texts:
            if len(texts) >= size:
                break
            for piece in splitter.split(text):
                add(piece)
    out = []
    for i, text in enumerate(texts[:size]):
        owner = persona_rows[i % len(persona_rows)]
        out.append({"pair_id": f"doc-{i:05d}", "prompt": text, "chosen_persona": owner["chosen_persona"],
                    "rejected_persona": owner["rejected_persona"], "domain": "eval"})
    return out
