"""Who lives in the persona world: persona types, their persona sentences and their shares.

Each type wants one style (style.py) and is described by one persona sentence in the paper's
form. Shares are skewed on purpose: the first type is the majority, the last the smallest
minority. A world config may change the shares or the sentences, or add types with other styles.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from persona_ray.core.persona import validate_persona
from persona_ray.core.settings import Settings


class PersonaType(Settings):
    """One kind of user: the style they want and the sentence that says so."""

    name: str = Field(description="short label used in reports")
    length: str = Field(description="short | long (style.py)")
    form: str = Field(description="prose | steps (style.py)")
    share: float = Field(gt=0, le=1, description="fraction of the users of this type")
    persona: str = Field(description="the gold persona: 'The user is ... and prefers ...'")

    @model_validator(mode="after")
    def _valid(self):
        if self.length not in ("short", "long") or self.form not in ("prose", "steps"):
            raise ValueError(f"persona type {self.name}: length must be short|long and form prose|steps")
        parsed = validate_persona(self.persona)  # the same rules as every persona in the system
        if not parsed.valid:
            raise ValueError(f"persona type {self.name}: persona is not valid ({parsed.reason})")
        return self

    @property
    def style(self) -> str:
        return f"{self.length}-{self.form}"


DEFAULT_TYPES = [
    PersonaType(name="detailed-prose", length="long", form="prose", share=0.50,
                persona="The user is a patient reader who enjoys context and prefers thorough answers written "
                        "as connected paragraphs."),
    PersonaType(name="brief-prose", length="short", form="prose", share=0.25,
                persona="The user is a busy professional with little time and prefers a one- or two-sentence "
                        "answer with no extra detail."),
    PersonaType(name="detailed-steps", length="long", form="steps", share=0.15,
                persona="The user is a hands-on learner who follows along while doing the task and prefers "
                        "detailed answers laid out as numbered steps."),
    PersonaType(name="brief-steps", length="short", form="steps", share=0.10,
                persona="The user is a quick skimmer who wants to act at once and prefers two or three short "
                        "numbered steps and nothing else."),
]


def check_types(types: list[PersonaType]) -> list[PersonaType]:
    names, styles = [t.name for t in types], [t.style for t in types]
    if len(set(names)) != len(names) or len(set(styles)) != len(styles):
        raise ValueError("persona types need distinct names and distinct styles")
    if abs(sum(t.share for t in types) - 1.0) > 1e-6:
        raise ValueError(f"persona type shares must sum to 1, got {sum(t.share for t in types):.3f}")
    return types
