"""The persona gate: the persona rules (core/persona.py) plus an embedding check for protected
attributes said indirectly, for the places where a persona enters the system (PI output, a
serving user's persona).

The word lists of core/persona.py catch "a devout Christian" or "a refugee"; they cannot name
every way of saying it ("planning a bar mitzvah for their son", "wears a hearing aid", "a
lifelong member of a Brahmin family"). This module compares the persona's attribute part (what
it says the user is: the text before "prefers", core.persona.attribute_part) by meaning with short
descriptions of protected attributes per category, and with descriptions of what personas
ordinarily say (jobs, hobbies, tasks, traits). A persona is refused when its attribute part is
close to a protected description (PROTECTED_SIMILARITY) and closer to it than to anything
ordinary (by MARGIN): "a nurse who manages patient schedules" is 0.73 from "a nurse" and at most
0.44 from any protected description, so it stays. Thresholds were chosen on the `tune` half of
data/persona_gate_cases.yaml; jobs/benchmarks/persona_gate.py reports recall and false positives
on the held-out half.

    find_indirect_protected(personas)   [(category, similarity) or None] per persona, batched:
                                        one encoder call for the whole list (MiniLM,
                                        core.sentences; loads once per process)
    gate_personas(personas)             [ParsedPersona]: validate_persona, then the embedding
                                        check on those that passed (a refusal names the category:
                                        "mentions a protected attribute indirectly (health status: 0.81)")
    gate_checked(parsed)                the embedding check on personas already validated (PI's parsed batch)
    gate_persona(persona)               the same for one persona (serving)
    warm_up()                           load the encoder now (a replica's start), not on the first persona

validate_persona stays fast and model-free (it runs wherever a persona is read, e.g. tokenising
training examples); the gate runs where personas enter, so what PI writes and what serving
accepts has passed both.

    >>> from persona_ray.core.persona_gate import find_indirect_protected, gate_persona
    >>> gate_persona("The user wears a hearing aid and prefers written instructions.").reason
    'mentions a protected attribute indirectly (disability: 0.47)'
    >>> gate_persona("The user is a busy nurse and prefers short answers.").valid
    True
    >>> find_indirect_protected(["The user is curious and prefers detail.",
    ...                          "The user is expecting their first baby and prefers calm advice."])
    [None, ('health status', 0.81)]
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import yaml

from persona_ray.core.persona import ParsedPersona, attribute_part, validate_persona

# Short descriptions of a protected attribute of the user, per category (the category names of
# core/persona.py's lists, plus caste, which no list names). Said the ways personas say them: a role,
# a practice, a condition, a life stage, not only the attribute's name. Refusals name the category
# of the nearest description.
PROTECTED_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "race or ethnicity": (
        "a Black person", "of African descent", "ethnically Asian", "of Hispanic heritage", "a person of colour",
        "of mixed race", "their racial background", "their ethnic heritage and ancestry", "their skin colour",
        "experiences racism", "racially profiled", "a descendant of slaves", "an ethnic minority",
        "Roma or Traveller heritage", "an Aboriginal person", "First Nations", "a member of an indigenous tribe",
        "a member of a Native American nation", "of West African ancestry", "their ethnic group",
    ),
    "religion": (
        "is religious", "practises their faith", "a Muslim who prays daily", "a Christian who goes to church",
        "a Jewish family observing the holidays", "celebrating a Hindu festival", "a Sikh", "a Buddhist",
        "reads scripture", "prays every day", "observes a religious holiday", "a member of a congregation",
        "wears religious clothing", "keeps religious dietary laws", "a religious ceremony for their child",
        "served a religious mission", "gives to their church", "converted to a religion", "a devout believer",
        "a member of a parish", "preparing a religious coming-of-age ceremony", "a Jewish family", "a Muslim",
        "a Hindu", "a Christian", "a Catholic", "attends religious services",
    ),
    "gender": (
        "is a woman", "is a man", "a mother", "a father", "a wife", "a husband", "a daughter", "a son", "a sister",
        "a brother", "an aunt", "an uncle", "a bride", "a groom", "a widow", "a widower", "a housewife",
        "a stepfather", "a stepmother", "transgender", "transitioning gender", "nonbinary", "female", "male",
        "a sorority member", "a fraternity member", "an actress", "a businesswoman",
    ),
    "sexual orientation": (
        "is gay", "is lesbian", "is bisexual", "LGBTQ", "has a same-sex partner", "came out as gay",
        "the queer community", "Pride", "asexual", "pansexual", "attracted to the same gender",
        "attracted to more than one gender", "a same-sex marriage", "the gay scene", "two-spirit",
        "part of the LGBTQ community", "an LGBTQ choir", "an LGBTQ employee group", "a gay pride event",
        "in a relationship with someone of the same sex",
    ),
    "nationality": (
        "an immigrant", "moved here from another country", "a recent arrival from abroad", "a refugee",
        "an asylum seeker", "on a visa", "waiting for a residence permit", "applying for citizenship",
        "naturalisation", "undocumented", "without legal papers", "their home country",
        "sends money to family back home", "a foreign national", "holds a foreign passport",
        "born in another country", "from Nigeria", "from the Philippines", "from Latin America",
        "a citizen of another country", "their nationality", "from an African country",
        "from a South American country", "from an Asian country", "from Eastern Europe", "from the Middle East",
        "a foreign-born worker", "a professional from abroad",
    ),
    "age": (
        "elderly", "an old person", "a senior citizen", "in their eighties", "a teenager", "a child",
        "a high school student", "a middle school student", "a minor under 18", "a retiree",
        "receiving a pension", "a college freshman", "celebrating a milestone birthday", "too young to vote",
        "lives in a retirement home", "grew up many decades ago", "their age",
    ),
    "disability": (
        "deaf", "hard of hearing", "blind", "visually impaired", "uses a wheelchair", "has a mobility impairment",
        "uses a screen reader", "uses sign language", "autistic", "has a disability", "an amputee",
        "uses a prosthetic limb", "has a learning disability", "paralysed", "has cerebral palsy",
        "needs accessibility aids", "has a service dog",
    ),
    "health status": (
        "pregnant", "expecting a baby", "has diabetes", "has cancer", "has a chronic illness", "has a mental illness",
        "has depression", "has an anxiety disorder", "in recovery from addiction", "HIV positive",
        "takes medication daily", "undergoing medical treatment", "has kidney disease", "diagnosed with a disease",
        "undergoing fertility treatment", "has epilepsy", "has an autoimmune condition", "has a heart condition",
    ),
    "caste": (
        "their caste", "a Brahmin", "a Dalit", "upper caste", "lower caste", "a scheduled caste", "their varna",
        "their jati", "a caste background", "Kshatriya", "Vaishya", "Shudra", "untouchable",
    ),
}

# What personas ordinarily say about the user: a job, a hobby, a task, a trait. A persona nearer
# one of these than to any protected description (by less than MARGIN) is about its work or
# interests, whatever nearby words it uses ("a nurse who manages patient schedules").
ORDINARY_DESCRIPTIONS: tuple[str, ...] = (
    "a nurse", "a doctor", "a pharmacist", "a teacher", "a software developer", "a photographer",
    "a wedding planner", "an event planner", "a baker", "a chef", "a caterer", "a student", "a researcher",
    "a business owner", "a manager", "a travel planner", "a collector", "an artist", "a musician",
    "a singer in a choir",
    "a historian", "a sociologist", "a lawyer", "a mechanic", "an engineer", "an analyst", "a coach",
    "an athlete in training", "a writer", "a designer", "a translator", "a tour guide", "an accountant",
    "a logistics manager", "a shop owner", "a farmer", "a hairdresser", "a makeup artist", "a tailor",
    "a florist", "a marketer", "an administrator", "a security guard", "a dog trainer", "a gardener",
    "a hobbyist", "an enthusiast", "a volunteer", "an organiser", "an interpreter", "a lab technician",
    "a customer", "an investor", "a parent", "a pet owner", "a homeowner", "a gamer", "a reader",
    "detail-oriented", "pragmatic", "curious", "safety-conscious", "risk-averse", "empathetic", "open-minded",
    "busy", "creative", "practical", "cautious", "ambitious", "a beginner", "an expert",
    # interests and values are topics, not who the user is (added when the first version refused
    # real personas such as "culturally sensitive" and "a concerned citizen")
    "interested in culture", "culturally sensitive", "socially aware", "an advocate for equality",
    "a concerned citizen", "interested in religion as a subject", "concerned about legal issues",
    "interested in history", "a fan",
)

# Chosen on the tune half of data/persona_gate_cases.yaml by `python jobs/benchmarks/persona_gate.py
# --tune`: the largest recall - false-positive rate, refusing at most 0.5 % of the real personas
# (where ../shared/data has them); ties go to the higher threshold, then the wider margin.
PROTECTED_SIMILARITY = 0.30
MARGIN = 0.07

_OPENER = re.compile(r"^\s*the\s+user(?:['’]s)?\b\s*(?:is\b\s*)?", re.IGNORECASE)
_TAIL = re.compile(r"(?:[\s,;:]+|\b(?:and|who|that|but|while|whose|is|a|an|the)\b)+$", re.IGNORECASE)


def attribute_text(persona: str) -> str:
    """The attribute part without the frame: "The user is a busy nurse and prefers ..." -> "a busy
    nurse"; "" when the persona says nothing before its preference ("The user values ...")."""
    return _TAIL.sub("", _OPENER.sub("", attribute_part(persona).strip())).strip()


@lru_cache(maxsize=1)
def _descriptions() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(category of each protected description, their vectors, the ordinary descriptions' vectors)."""
    from persona_ray.core.sentences import encode_sentences

    categories = [c for c, texts in PROTECTED_DESCRIPTIONS.items() for _ in texts]
    protected = encode_sentences([t for texts in PROTECTED_DESCRIPTIONS.values() for t in texts])
    return categories, protected, encode_sentences(list(ORDINARY_DESCRIPTIONS))


def similarity_scores(personas: list[str]) -> list[tuple[str, float, float] | None]:
    """Per persona (category of the nearest protected description, its similarity, the nearest
    ordinary description's similarity), or None when the persona has no attribute part."""
    from persona_ray.core.sentences import encode_sentences

    texts = [attribute_text(p) for p in personas]
    present = [i for i, text in enumerate(texts) if text]
    scores: list[tuple[str, float, float] | None] = [None] * len(personas)
    if not present:
        return scores
    categories, protected, ordinary = _descriptions()
    vectors = encode_sentences([texts[i] for i in present], batch_size=256)
    to_protected, to_ordinary = vectors @ protected.T, (vectors @ ordinary.T).max(axis=1)
    nearest = to_protected.argmax(axis=1)
    for row, i in enumerate(present):
        scores[i] = (categories[nearest[row]], float(to_protected[row, nearest[row]]), float(to_ordinary[row]))
    return scores


def is_protected(score: tuple[str, float, float] | None, threshold: float = PROTECTED_SIMILARITY,
                 margin: float = MARGIN) -> bool:
    """The rule: near a protected description, and nearer it than anything ordinary."""
    return score is not None and score[1] >= threshold and score[1] - score[2] >= margin


def find_indirect_protected(personas: list[str]) -> list[tuple[str, float] | None]:
    """(category, similarity) for each persona whose attribute part says a protected attribute by
    meaning, None for the others; one encoder call for the whole list."""
    return [(s[0], round(s[1], 2)) if is_protected(s) else None for s in similarity_scores(personas)]


def refusal(found: tuple[str, float]) -> str:
    """The reason a persona is refused for `found` (category, similarity)."""
    return f"mentions a protected attribute indirectly ({found[0]}: {found[1]:.2f})"


def gate_checked(checked: list[ParsedPersona]) -> list[ParsedPersona]:
    """Personas already through validate_persona (e.g. parsed PI output) -> the same, with those
    valid ones that say a protected attribute by meaning refused; one encoder call for all."""
    valid = [i for i, parsed in enumerate(checked) if parsed.valid]
    out = list(checked)
    for i, found in zip(valid, find_indirect_protected([checked[i].persona for i in valid])):
        if found:
            out[i] = ParsedPersona("", False, refusal(found))
    return out


def gate_personas(personas: list[Any]) -> list[ParsedPersona]:
    """Each persona through the whole gate: validate_persona, then the embedding check (batched)."""
    return gate_checked([validate_persona(p) for p in personas])


def gate_persona(persona: Any) -> ParsedPersona:
    """One persona through the whole gate (serving: a user's persona as it arrives)."""
    return gate_personas([persona])[0]


def warm_up() -> None:
    """Load the encoder and the descriptions' vectors now (a replica's start) rather than on the
    first persona."""
    _descriptions()


def load_cases(half: str | None = None) -> list[dict[str, str]]:
    """The detector's measured cases (data/persona_gate_cases.yaml), all or one half ("tune" or
    "held_out"): dicts {kind: indirect|benign, category, half, persona}."""
    text = resources.files("persona_ray.data").joinpath("persona_gate_cases.yaml").read_text()
    cases = yaml.safe_load(text)["cases"]
    return [case for case in cases if half is None or case["half"] == half]
