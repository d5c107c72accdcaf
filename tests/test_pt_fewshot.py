"""Few-shot persona tailoring prompts: exact layout, fixed and nearest exemplar choice."""

from __future__ import annotations

import pytest

from persona_ray.tailoring.fewshot import LexicalRetriever, build_fewshot_prompt, fewshot_prompt, fixed_exemplars

FEWSHOT = [
    {"pair_id": "b", "domain": "reddit", "prompt": "Why is the sky blue?", "chosen": "Rayleigh scattering.",
     "chosen_persona": "The user is curious and prefers short science facts."},
    {"pair_id": "a", "domain": "mnemonic", "prompt": "Mnemonic for 'laconic'?", "chosen": "Lack-on-ic: lacks words.",
     "chosen_persona": "The user is a word lover and prefers playful sound-alikes."},
    {"pair_id": "c", "domain": "reddit", "prompt": "How do bread yeasts make dough rise?",
     "chosen": "Yeast eats sugar and releases gas.", "chosen_persona": "The user is a home baker and prefers plain words."},
]


def test_exact_layout():
    prompt = build_fewshot_prompt(FEWSHOT[:1], "Why do stars twinkle?", "The user is a stargazer and prefers visuals.")
    assert prompt == (
        "Prompt: Why is the sky blue?\nPersona: The user is curious and prefers short science facts.\n"
        "Response: Rayleigh scattering.\n\n"
        "Prompt: Why do stars twinkle?\nPersona: The user is a stargazer and prefers visuals.\nResponse:"
    )


def test_fixed_exemplars_prefer_the_domain_and_are_stable():
    assert [r["pair_id"] for r in fixed_exemplars(FEWSHOT, 2, "reddit")] == ["b", "c"]
    assert [r["pair_id"] for r in fixed_exemplars(FEWSHOT, 3, "mnemonic")] == ["a", "b", "c"]
    assert fixed_exemplars(list(reversed(FEWSHOT)), 2, None) == fixed_exemplars(FEWSHOT, 2, None)


def test_nearest_exemplars_follow_the_query():
    retriever = LexicalRetriever(FEWSHOT)
    assert retriever.search("What makes dough rise with yeast?", 1)[0]["pair_id"] == "c"
    text = fewshot_prompt(FEWSHOT, 1, "A mnemonic for 'laconic', please", "The user is busy and prefers brevity.",
                          strategy="nearest")
    assert text.startswith("Prompt: Mnemonic for 'laconic'?")
    with pytest.raises(ValueError, match="strategy"):
        fewshot_prompt(FEWSHOT, 1, "q", "The user is x and prefers y.", strategy="random")
