"""The persona-inference prompt: shared k-shot prefix, side swap, exemplars."""

from __future__ import annotations

import pytest

from persona_ray.inference.parse import validate_persona
from persona_ray.inference.prompt import (
    INSTRUCTION,
    build_pi_prompt,
    build_prefix,
    build_query,
    check_k_shot,
    load_exemplars,
)

DOMAINS = ("safety_qa", "dialogue", "reddit", "mnemonic")


def test_exemplars_cover_four_domains_and_are_valid_personas():
    exemplars = load_exemplars()
    assert set(exemplars) == {"safety_qa", "dialogue", "reddit", "mnemonic"}
    for domain, shots in exemplars.items():
        assert len(shots) == 5  # the paper's persona-inference prompts use 5 per domain
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
    # each response's length in words beside it (a small PI model cannot count)
    assert chosen == ("Prompt: Q?\nResponse 1 (1 words): CHOSEN\nResponse 2 (1 words): REJECTED\n"
                      "Preferred: Response 1\nPersona:")
    assert rejected == ("Prompt: Q?\nResponse 1 (1 words): REJECTED\nResponse 2 (1 words): CHOSEN\n"
                        "Preferred: Response 1\nPersona:")
    assert "Response 1 (4 words): a b c\nd" in build_query("Q?", "a b c\nd", "e", "chosen")
    with pytest.raises(ValueError, match="side"):
        build_query("Q?", "a", "b", "both")


def test_k_larger_than_available_is_an_error():
    with pytest.raises(ValueError, match="k_shot=6"):
        build_prefix("mnemonic", 6)
    assert "### Example" not in build_prefix("mnemonic", 0)


def _persona_line(persona: str) -> str:
    return " ".join(persona.split())


@pytest.mark.parametrize("domain", DOMAINS)
def test_five_shots_show_every_exemplar_and_three_shots_only_the_original_three(domain):
    from persona_ray.core.errors import UserError

    shots = load_exemplars()[domain]
    assert len(shots) == 5
    five = build_pi_prompt("Q?", "chosen", "rejected", "chosen", domain, 5)
    assert five.startswith(build_prefix(domain, 5)) and five.count("### Example") == 5
    for i, shot in enumerate(shots, start=1):
        assert f"### Example {i}\n" in five
        assert f"Preferred: Response {shot.preferred}\nPersona: {shot.persona.strip()}\n" in five
        assert shot.prompt.strip() in five

    three = build_prefix(domain, 3)
    assert three.count("### Example") == 3 and five.startswith(three[: -len("### Task\n")])
    for shot in shots[:3]:
        assert shot.persona.strip() in three
    for shot in shots[3:]:  # the exemplars added for 5-shot never reach a k <= 3 prompt
        assert shot.persona.strip() not in three and shot.prompt.strip() not in three
        assert shot.response_1.strip() not in three and shot.response_2.strip() not in three

    check_k_shot(5)  # every domain has 5
    with pytest.raises(UserError, match="has only 5 exemplars"):
        check_k_shot(6)


def test_three_shot_prefix_is_the_original_three_exemplars(tmp_path):
    """The k <= 3 prompt is built from exactly the first three exemplars: a file holding only
    those gives the same prefix as the bundled five."""
    from importlib import resources

    import yaml

    raw = yaml.safe_load(resources.files("persona_ray.data").joinpath("pi_exemplars.yaml").read_text())
    first_three = tmp_path / "first-three.yaml"
    first_three.write_text(yaml.safe_dump({domain: items[:3] for domain, items in raw.items()}))
    for domain in DOMAINS:
        for k in (1, 2, 3):
            assert build_prefix(domain, k) == build_prefix(domain, k, str(first_three))
        with pytest.raises(ValueError, match="k_shot=4"):
            build_prefix(domain, 4, str(first_three))


def test_preferred_labels_are_balanced_and_personas_distinct():
    exemplars = load_exemplars()
    for domain, shots in exemplars.items():
        assert {shot.preferred for shot in shots} == {1, 2}, domain
    labels = [shot.preferred for shots in exemplars.values() for shot in shots]
    assert len(labels) == 20 and labels.count(1) == labels.count(2) == 10
    personas = [_persona_line(shot.persona) for shots in exemplars.values() for shot in shots]
    assert len(set(personas)) == len(personas) == 20


def test_exemplar_personas_are_short_general_and_fit_guided_decoding():
    """Exemplars show the kind of persona the instruction asks for: short, matching the guided
    pattern, and not always favouring the longer response (no verbosity bias to copy)."""
    import re

    from persona_ray.inference.parse import guided_regex

    pattern = re.compile(guided_regex())
    shorter_wins = 0
    for domain, shots in load_exemplars().items():
        for shot in shots:
            persona = _persona_line(shot.persona)
            assert pattern.fullmatch(persona), (domain, persona)
            assert len(persona.split()) <= 35, (domain, persona)
            preferred, other = ((shot.response_1, shot.response_2) if shot.preferred == 1
                                else (shot.response_2, shot.response_1))
            shorter_wins += len(preferred.split()) < len(other.split())
    assert shorter_wins >= 8  # of 20


def test_instruction_asks_for_a_short_general_persona():
    text = INSTRUCTION.lower()
    assert "very short" in text and "high-level traits" in text and "specific details" in text
    assert "the user is [attribute] and prefers [explanation]." in text
