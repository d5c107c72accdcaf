"""The persona-inference prompt: instruction + k exemplars of the pair's domain + the query.

The instruction and exemplars come first and are identical for every request of a domain,
so an engine with prefix caching computes them once. For side "chosen" the chosen response is
shown as the preferred one; for side "rejected" the two responses swap roles, which asks for the
persona of a user who would have preferred the rejected response.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

# Written on every PI record and in the manifest: bump it whenever the instruction or the bundled
# exemplars change what a prompt looks like (a resumed run keys by pair and side only, so start a
# new output folder after a bump). pi-v2: a very short, general persona; 5 exemplars per domain.
# pi-v3: each response's length in words beside it.
TEMPLATE_VERSION = "pi-v3"
DEFAULT_DOMAIN = "safety_qa"

INSTRUCTION = (
    "Two assistant responses to the same prompt are shown, and one of them is marked as the one "
    "a particular user preferred. Describe that user in one very short sentence of the form "
    '"The user is [attribute] and prefers [explanation]." The attribute names only high-level traits '
    "such as needs, goals, interests, expertise, personality or communication style; the explanation "
    "says in general terms which qualities of the preferred response suit them. Stay general: do "
    "not repeat topics, names, numbers or other specific details of the prompt or the responses. "
    "Never mention race, ethnicity, religion, gender, sexual orientation, nationality, age, "
    "disability or health. Write only the sentence."
)


@dataclass(frozen=True)
class Exemplar:
    prompt: str
    response_1: str
    response_2: str
    preferred: int
    persona: str


@lru_cache(maxsize=None)
def load_exemplars(path: str | None = None) -> dict[str, tuple[Exemplar, ...]]:
    """Exemplars per domain from YAML (the bundled file unless `path` is given)."""
    if path is None:
        text = resources.files("persona_ray.data").joinpath("pi_exemplars.yaml").read_text()
    else:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    raw = yaml.safe_load(text)
    exemplars = {}
    for domain, items in raw.items():
        exemplars[domain] = tuple(Exemplar(**item) for item in items)
        for i, ex in enumerate(exemplars[domain]):
            if ex.preferred not in (1, 2):
                raise ValueError(f"exemplar {domain}[{i}]: 'preferred' must be 1 or 2")
    return exemplars


def check_k_shot(k: int, exemplar_path: str | None = None) -> None:
    """Every domain must have k exemplars (any domain may appear in the data); UserError if not."""
    from persona_ray.core.errors import UserError, one_line

    try:
        exemplars = load_exemplars(exemplar_path)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"exemplars: cannot read {exemplar_path} ({one_line(exc, 200)}). Fix: a YAML file "
                        "mapping each domain to a list of exemplars") from None
    if DEFAULT_DOMAIN not in exemplars:
        raise UserError(f"exemplars: {exemplar_path} has no '{DEFAULT_DOMAIN}' domain (the fallback). "
                        f"Fix: add exemplars for it")
    fewest = min(exemplars, key=lambda domain: len(exemplars[domain]))
    if k > len(exemplars[fewest]):
        counts = ", ".join(f"{domain} {len(shots)}" for domain, shots in exemplars.items())
        raise UserError(f"k_shot: {k}, but domain '{fewest}' has only {len(exemplars[fewest])} exemplars "
                        f"({counts}). Fix: k_shot <= {len(exemplars[fewest])}, or add exemplars")


def _block(prompt: str, response_1: str, response_2: str, preferred: int) -> str:
    # Each response's length is written out: how long an answer is often decides a preference, and
    # a small PI model cannot count the words of a long text it reads.
    return (
        f"Prompt: {prompt.strip()}\n"
        f"Response 1 ({len(response_1.split())} words): {response_1.strip()}\n"
        f"Response 2 ({len(response_2.split())} words): {response_2.strip()}\n"
        f"Preferred: Response {preferred}\n"
        "Persona:"
    )


def exemplar_personas(path: str | None = None) -> list[str]:
    """Every exemplar's persona, all domains (the bundled file unless `path`)."""
    return [ex.persona for shots in load_exemplars(path).values() for ex in shots]


def shown_exemplars(domain: str, k: int, exemplar_path: str | None = None) -> tuple[Exemplar, ...]:
    """The k exemplars a prompt for `domain` shows (the default domain's for an unknown one)."""
    exemplars = load_exemplars(exemplar_path)
    shots = exemplars.get(domain) or exemplars[DEFAULT_DOMAIN]
    if k > len(shots):
        raise ValueError(f"k_shot={k} but domain '{domain}' has only {len(shots)} exemplars")
    return shots[:k]


@lru_cache(maxsize=None)
def build_prefix(domain: str, k: int, exemplar_path: str | None = None) -> str:
    """Instruction and k exemplars for a domain (falls back to the default domain)."""
    parts = [INSTRUCTION, ""]
    for i, ex in enumerate(shown_exemplars(domain, k, exemplar_path), start=1):
        parts.append(f"### Example {i}")
        parts.append(_block(ex.prompt, ex.response_1, ex.response_2, ex.preferred) + " " + ex.persona)
        parts.append("")
    parts.append("### Task")
    return "\n".join(parts) + "\n"


def build_query(prompt: str, chosen: str, rejected: str, side: str) -> str:
    """The pair-specific tail: the response whose persona is wanted is shown as preferred."""
    if side == "chosen":
        return _block(prompt, chosen, rejected, preferred=1)
    if side == "rejected":
        return _block(prompt, rejected, chosen, preferred=1)
    raise ValueError(f"side must be 'chosen' or 'rejected', got {side!r}")


def build_pi_prompt(
    prompt: str, chosen: str, rejected: str, side: str, domain: str, k: int, exemplar_path: str | None = None
) -> str:
    return build_prefix(domain, k, exemplar_path) + build_query(prompt, chosen, rejected, side)
