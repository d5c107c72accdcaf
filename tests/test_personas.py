"""Persona parsing, the guided pattern and the protected-attribute validator."""

from __future__ import annotations

import re

import pytest

from persona_ray.core.persona import find_protected, validate_persona
from persona_ray.inference.parse import guided_regex, parse_persona
from tests.conftest import SHARED_DATA, read_jsonl


def test_parse_takes_first_sentence_and_ignores_chatter():
    raw = "Sure! The user is a busy planner and prefers short checklists. They also like tea.\nMore text"
    parsed = parse_persona(raw)
    assert parsed.valid and parsed.persona == "The user is a busy planner and prefers short checklists."


@pytest.mark.parametrize(
    "raw, truncated, reason",
    [
        ("", False, "empty output"),
        ("I cannot help with that.", False, "no 'The user ...' sentence"),
        ("The user is curious and likes", True, "truncated"),
        ("The user is curious.", False, "no preference stated"),
        ("The user is a devout Christian and prefers scripture.", False, "religion"),
        ("The user is a retired teacher and prefers long stories.", False, "age"),
        ("The user is a busy mom and prefers quick recipes.", False, "gender"),
        ("The user is a nurse and prefers answers that fit her schedule.", False, "gender"),
        ("The user is " + "very " * 90 + "calm and prefers detail.", False, "longer than"),
        ("The user is\x07 calm and prefers detail.", False, "control characters"),
    ],
)
def test_invalid_outputs_get_a_reason(raw, truncated, reason):
    parsed = parse_persona(raw, truncated=truncated)
    assert not parsed.valid and parsed.persona == ""
    assert reason in parsed.reason


@pytest.mark.parametrize(
    "persona",
    [
        "The user is a senior engineer who prefers precise answers.",
        "The user is an advocate for gender equality and prefers direct language.",
        "The user is curious and prefers black-and-white answers with no hedging.",
        "The user is a marketer and prefers ways to reach young adults.",  # about others, not the user
        "The user values brevity and prefers bullet points.",
    ],
)
def test_topics_and_roles_are_not_protected_attributes(persona):
    assert validate_persona(persona).valid, validate_persona(persona).reason


def test_guided_regex_accepts_its_form_and_bounds_length():
    pattern = re.compile(guided_regex(20, 30))
    assert pattern.fullmatch("The user is a curious reader and prefers vivid examples.")
    assert not pattern.fullmatch("The user is a curious reader and prefers vivid examples. More.")
    assert not pattern.fullmatch("The user is " + "x" * 21 + " and prefers vivid examples.")
    assert not pattern.fullmatch("A user is calm and prefers detail.")


def test_real_personas_from_the_paper_mostly_validate():
    rows = read_jsonl(SHARED_DATA / "beavertails-test-personas.jsonl")
    personas = [r[k] for r in rows for k in ("chosen_persona", "rejected_persona")]
    results = [validate_persona(p) for p in personas]
    valid = sum(r.valid for r in results)
    assert len(personas) == 998
    # Real LLM personas: nearly all pass; the few flagged ones really state a trait or lack a preference.
    assert valid / len(personas) >= 0.98
    flagged = [p for p, r in zip(personas, results) if "protected" in r.reason]
    assert any("devout Christian" in p for p in flagged)


def test_find_protected_reports_category_and_word():
    assert find_protected("The user is a Canadian traveler who prefers maps.") == ("nationality", "Canadian")
    assert find_protected("The user is a careful planner who prefers maps.") is None


@pytest.mark.parametrize("control", ["\x00", "\x07", "\x1b", "\x7f", "\x9b", "\x80"])
def test_one_control_character_rule_wherever_a_persona_enters(control):
    """PI output, training/generation templates and the serving ingress refuse the same personas."""
    from persona_ray.core.persona import PersonaError, clean_persona
    from persona_ray.serving.app import ServeConfig, TailorRequest, check_request
    from persona_ray.tailoring.templates import format_input

    persona = f"The user is calm{control} and prefers detail."
    assert "control characters" in validate_persona(persona).reason
    with pytest.raises(PersonaError, match="control characters"):
        clean_persona(persona)
    with pytest.raises(ValueError, match="persona: contains control characters"):
        format_input("Hi", persona)
    with pytest.raises(ValueError, match="persona: contains control characters"):
        check_request(TailorRequest(prompt="Hi", persona=persona), ServeConfig(index="i"))


def test_whitespace_of_every_kind_collapses_the_same_everywhere():
    from persona_ray.core.persona import clean_persona
    from persona_ray.tailoring.templates import format_input

    persona = "The user is\ncalm\u2028and\x85prefers\t detail."
    assert clean_persona(persona) == "The user is calm and prefers detail."
    assert validate_persona(persona).persona == "The user is calm and prefers detail."
    assert format_input("Hi", persona).splitlines()[1] == "Persona: The user is calm and prefers detail."
