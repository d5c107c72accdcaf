"""The persona-inference prompt: shared k-shot prefix, side swap, exemplars."""

from __future__ import annotations

import pytest

from persona_ray.inference.parse import validate_persona
from persona_ray.inference.prompt import INSTRUCTION, build_pi_prompt, build_prefix, build_query, load_exemplars


def test_exemplars_cover_four_domains_and_are_valid_personas():
    exemplars = load_exemplars()
    assert set(exemplars) == {"safety_qa", "dialogue", "reddit", "mnemonic"}
    for domain, shots in exemplars.items():
        assert len(shots) == 3
        for shot in shots:
            assert validate_persona(shot.persona).valid, (domain, shot.persona)
            assert shot.persona.startswith("The user is ") and " and prefers " in shot.persona


def test_every_request_of_a_domain_shares_the_prefix():
    a = build_pi_prompt("Q1?", "long answer", "short", "chosen", "reddit", 3)
    b = build_pi_prompt("Q2?", "x", "y", "rejected", "reddit", 3)
    prefix = build_prefix("reddit", 3)
    assert a.startswith(prefix) and b.startswith(prefix)
    assert prefix.startswith(INSTRUCTION) and prefix.count("### Example") == 3
    assert build_prefix("unknown-domain", 2) == build_prefix("safety_qa", 2)


def test_sides_swap_which_response_is_preferred():
    chosen = build_query("Q?", "CHOSEN", "REJECTED", "chosen")
    rejected = build_query("Q?", "CHOSEN", "REJECTED", "rejected")
    assert chosen == "Prompt: Q?\nResponse 1: CHOSEN\nResponse 2: REJECTED\nPreferred: Response 1\nPersona:"
    assert rejected == "Prompt: Q?\nResponse 1: REJECTED\nResponse 2: CHOSEN\nPreferred: Response 1\nPersona:"
    with pytest.raises(ValueError, match="side"):
        build_query("Q?", "a", "b", "both")


def test_k_larger_than_available_is_an_error():
    with pytest.raises(ValueError, match="k_shot=4"):
        build_prefix("mnemonic", 4)
    assert "### Example" not in build_prefix("mnemonic", 0)
