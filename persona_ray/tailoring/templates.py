"""Persona-tailoring (PT) inputs: the single place that defines what the model sees and learns.

A PT model answers (prompt, persona) with a response tailored to the persona. Every trainer,
evaluator and inference path builds its text here, so training and inference never drift apart.

Templates (exact strings):

    with a persona     "Prompt: {prompt}\\nPersona: {persona}\\nResponse:"
    without (type none) "Prompt: {prompt}\\nResponse:"
    response            " {response}{eos_token}"

Training types, from one augmented row (pair_id, prompt, chosen, rejected, chosen_persona,
rejected_persona; see persona_ray.dataset.augment):

    chosen    (prompt, P_C) -> r_C;               DPO: under P_C, r_C over r_R
    rejected  (prompt, P_R) -> r_R;               DPO: under P_R, r_R over r_C
    all       both of the above
    none      (prompt, no persona) -> r_C;        DPO: r_C over r_R (plain DPO baseline)

Data contract (TRL style, token ids are lists of ints, no special tokens added except the EOS
that ends each response):

    SFT example   {"pair_id", "persona_side", "input", "response"}
    SFT tokens    {"input_ids", "labels", "attention_mask"}; labels are -100 on the input part
    DPO example   {"pair_id", "persona_side", "prompt", "chosen", "rejected"}
    DPO tokens    {"prompt_input_ids", "chosen_input_ids", "rejected_input_ids"}

Personas are untrusted text (see persona_ray.inference.parse): whitespace inside a persona, newlines
included, collapses to single spaces so a persona can never add a template line.
No Ray and no TRL here: only a tokenizer object is passed in.
"""

from __future__ import annotations

import re
from typing import Any

from persona_ray.core.persona import clean_persona

TRAINING_TYPES = ("chosen", "rejected", "all", "none")
IGNORE_INDEX = -100  # the label value that PyTorch's cross-entropy (and TRL) ignores



def _text(value: Any, field: str) -> str:
    """Stripped, non-empty text, or ValueError naming the field."""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be text, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{field} is empty")
    return value.strip()


def format_input(prompt: str, persona: str | None) -> str:
    """The model input: "Prompt: {prompt}\\nPersona: {persona}\\nResponse:".

    `persona=None` (training type "none") gives "Prompt: {prompt}\\nResponse:". Surrounding
    whitespace is stripped; whitespace inside the persona collapses to single spaces.
    Raises ValueError naming the field for an empty prompt or an empty persona.
    """
    prompt_text = _text(prompt, "prompt")
    if persona is None:
        return f"Prompt: {prompt_text}\nResponse:"
    return f"Prompt: {prompt_text}\nPersona: {clean_persona(persona)}\nResponse:"


def format_response(response: str, eos_token: str) -> str:
    """The training target: " {response}{eos_token}" (follows "Response:" after one space)."""
    if not isinstance(eos_token, str) or not eos_token:
        raise ValueError("eos_token is missing (the tokenizer needs an EOS token)")
    text = _text(response, "response")
    # An EOS inside the text would end the target early and teach the model to stop mid-answer.
    if eos_token in text:
        raise ValueError(f"response contains the EOS token text {eos_token!r}")
    return f" {text}{eos_token}"


# ---------------------------------------------------------------------------------------------
# Plain-words personas, for models trained without personas (type none) given one at inference.

# Third person -> first person for verbs that follow "The user" (or join it with and/but/or).
_FIRST_PERSON = {
    "is": "am", "has": "have", "does": "do", "was": "was",
    "prefers": "prefer", "values": "value", "wants": "want", "likes": "like", "loves": "love",
    "prioritizes": "prioritize", "prioritises": "prioritise", "appreciates": "appreciate",
    "seeks": "seek", "favors": "favor", "favours": "favour", "enjoys": "enjoy", "needs": "need",
    "expects": "expect", "cares": "care", "tends": "tend", "dislikes": "dislike",
    "wishes": "wish", "hopes": "hope", "requires": "require", "desires": "desire",
    "finds": "find", "looks": "look", "leans": "lean", "relies": "rely", "trusts": "trust",
    "feels": "feel", "thinks": "think", "believes": "believe", "aims": "aim", "avoids": "avoid",
    "responds": "respond", "learns": "learn", "works": "work", "seems": "seem", "struggles": "struggle",
    "emphasizes": "emphasize", "emphasises": "emphasise", "focuses": "focus", "asks": "ask",
    "understands": "understand", "knows": "know", "uses": "use", "gravitates": "gravitate",
}
_VERBS = "|".join(sorted(_FIRST_PERSON, key=len, reverse=True))
_ADVERB = r"(?:also|often|usually|generally|typically|strongly|clearly|really|especially|mostly)"
_OPENER = re.compile(rf"^the user\s+(?:{_ADVERB}\s+)?({_VERBS})\b", re.IGNORECASE)
_OPENER_POSSESSIVE = re.compile(r"^the user's\s+", re.IGNORECASE)
# A verb coordinated with the subject's verb: "..., and prefers", "but values", ", seeks".
_COORDINATED = re.compile(rf"((?:,\s*(?:and|but|or)?|\b(?:and|but|or))\s+(?:{_ADVERB}\s+)?)({_VERBS})\b")
# After a relative pronoun the verbs agree with its antecedent ("an individual who prefers").
_RELATIVE = re.compile(r"\b(?:who|whom|whose|that|which)\b", re.IGNORECASE)
# Later mentions of the user (pronouns such as "their" are left alone: they may mean others).
_LATER_MENTION = [
    (re.compile(r"\bthe user's\b", re.IGNORECASE), "my"),
    (re.compile(r"\bthe user\b", re.IGNORECASE), "me"),
]


def _first_person_verbs(clause: str) -> str:
    return _COORDINATED.sub(lambda m: m.group(1) + _FIRST_PERSON[m.group(2)], clause)


def plain_words_persona(persona: str) -> str:
    """Rewrite "The user ..." as "I ..." for a model that never saw the persona template.

    "The user is curious and prefers examples." -> "I am curious and prefer examples."
    "The user values X and prefers Y" -> "I value X and prefer Y"
    Rules: the opener "The user <verb>" becomes "I <first-person verb>" ("The user's" becomes
    "My"); verbs coordinated with it (", and / and / but / or <verb>") change too, but only
    before a relative pronoun (who/that/which), whose verbs agree with its own antecedent;
    a later "the user's" / "the user" becomes "my" / "me". Other pronouns ("their") stay, as
    they may refer to other people. Text without the opener is returned as-is (whitespace
    collapsed), so an already first-person persona passes through.
    """
    text = clean_persona(persona)
    match = _OPENER.match(text)
    possessive = _OPENER_POSSESSIVE.match(text)
    if possessive:  # "The user's goal is ..." -> "My goal is ..." (verbs agree with "goal")
        head, rest = "My ", text[possessive.end():]
    elif match:
        # "The user [adverb] prefers ..." -> "I [adverb] prefer ..."
        between = text[len("the user"):match.start(1)]  # the space and any adverb
        rest = text[match.end(1):]
        relative = _RELATIVE.search(rest)
        cut = relative.start() if relative else len(rest)
        head = "I" + between + _FIRST_PERSON[match.group(1).lower()]
        rest = _first_person_verbs(rest[:cut]) + rest[cut:]
    else:
        return text
    for pattern, replacement in _LATER_MENTION:
        rest = pattern.sub(replacement, rest)
    return head + rest


def prompt_with_plain_persona(prompt: str, persona: str) -> str:
    """The prompt for a type-none model given a persona: "{prompt}\\n\\n{I ... persona}"."""
    return f"{_text(prompt, 'prompt')}\n\n{plain_words_persona(persona)}"


def inference_input(prompt: str, persona: str | None, persona_template: bool) -> str:
    """What a trained model is asked to continue at inference.

    persona_template=True: a PT model, "Prompt: …\nPersona: …\nResponse:" (no Persona line when
    persona is None). False: a model trained without personas (type none), which never saw the
    Persona line; a persona goes into the prompt in plain words.
    """
    if persona_template or persona is None:
        return format_input(prompt, persona)
    return format_input(prompt_with_plain_persona(prompt, persona), None)


# ---------------------------------------------------------------------------------------------
# Examples from augmented rows.

def _check_type(training_type: str) -> None:
    if training_type not in TRAINING_TYPES:
        raise ValueError(f"training_type must be one of {TRAINING_TYPES}, got {training_type!r}")


def _field(row: dict, field: str) -> str:
    """A required non-empty text field of a row; errors name the pair and the field."""
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"pair {row.get('pair_id')!r}: {field} is missing or empty")
    return value


def _input(row: dict, side: str) -> str:
    persona = None if side == "none" else _field(row, f"{side}_persona")
    try:
        return format_input(_field(row, "prompt"), persona)
    except ValueError as err:
        field = "prompt" if str(err).startswith("prompt") else f"{side}_persona"
        raise ValueError(f"pair {row.get('pair_id')!r}: {field}: {err}") from err


def _sides(training_type: str) -> tuple[str, ...]:
    _check_type(training_type)
    return {"chosen": ("chosen",), "rejected": ("rejected",), "all": ("chosen", "rejected"),
            "none": ("none",)}[training_type]


def sft_examples(row: dict, training_type: str) -> list[dict]:
    """SFT examples from one augmented row.

    chosen -> [(prompt, P_C) -> r_C]; rejected -> [(prompt, P_R) -> r_R]; all -> both (P_C
    first); none -> [(prompt, no persona) -> r_C]. Each example:
    {"pair_id", "persona_side": "chosen"|"rejected"|"none", "input": format_input(...),
    "response": the raw response text}. ValueError (naming pair_id and field) when the prompt,
    a needed persona or the target response is missing or empty.
    """
    examples = []
    for side in _sides(training_type):
        target = "chosen" if side == "none" else side  # type none learns the preferred answer
        examples.append({"pair_id": row.get("pair_id"), "persona_side": side,
                         "input": _input(row, side), "response": _field(row, target)})
    return examples


def dpo_examples(row: dict, training_type: str) -> list[dict]:
    """DPO examples from one augmented row.

    Under P_C (types chosen/all) r_C is preferred over r_R; under P_R (types rejected/all)
    r_R over r_C: the persona decides which answer is better. Type none: no persona, r_C over
    r_R. Each example: {"pair_id", "persona_side", "prompt": format_input(...),
    "chosen": preferred response text, "rejected": the other}.
    """
    examples = []
    for side in _sides(training_type):
        preferred, other = ("rejected", "chosen") if side == "rejected" else ("chosen", "rejected")
        examples.append({"pair_id": row.get("pair_id"), "persona_side": side, "prompt": _input(row, side),
                         "chosen": _field(row, preferred), "rejected": _field(row, other)})
    return examples


# ---------------------------------------------------------------------------------------------
# Tokenisation.

def _ids(tokenizer, text: str) -> list[int]:
    # No BOS/EOS from the tokenizer: the only special token is the EOS format_response writes.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _response_ids(tokenizer, response: str, pair_id: Any) -> list[int]:
    try:
        text = format_response(response, tokenizer.eos_token)
    except ValueError as err:
        raise ValueError(f"pair {pair_id!r}: {err}") from err
    ids = _ids(tokenizer, text)
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is not None and (not ids or ids[-1] != eos_id):
        raise ValueError(f"pair {pair_id!r}: the response does not end with the EOS token id {eos_id}")
    return ids


def _fit_prompt(prompt_ids: list[int], longest_response: int, max_length: int, pair_id: Any) -> list[int]:
    """Left-truncate the prompt so prompt + the longest response fit; never cut a response."""
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    room = max_length - longest_response
    if room < 1:
        raise ValueError(f"pair {pair_id!r}: the response takes {longest_response} tokens, which leaves no "
                         f"room for the prompt within max_length={max_length}")
    # Cutting the left keeps the persona and the "Response:" cue next to the answer.
    return prompt_ids[-room:] if len(prompt_ids) > room else prompt_ids


def tokenize_sft(example: dict, tokenizer, max_length: int) -> dict:
    """Token ids for one SFT example: {"input_ids", "labels", "attention_mask"}.

    The input and the response are tokenised separately (add_special_tokens=False) so the
    label mask falls exactly on the boundary: labels are -100 on every input token and the
    token id on every response token, the final EOS included. Too long: the input is cut from
    the left; the response is never cut, and ValueError (naming pair_id) is raised when it does
    not fit together with at least one input token.
    """
    pair_id = example.get("pair_id")
    prompt_ids = _ids(tokenizer, example["input"])
    response_ids = _response_ids(tokenizer, example["response"], pair_id)
    if not prompt_ids:
        raise ValueError(f"pair {pair_id!r}: the input has no tokens")
    prompt_ids = _fit_prompt(prompt_ids, len(response_ids), max_length, pair_id)
    input_ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids
    # Never train on a prompt without a response, nor on the prompt itself.
    if all(label == IGNORE_INDEX for label in labels) or not any(label == IGNORE_INDEX for label in labels):
        raise ValueError(f"pair {pair_id!r}: labels must mark both an input and a response part")
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


def tokenize_dpo(example: dict, tokenizer, max_length: int, max_prompt_length: int | None = None) -> dict:
    """Token ids for one DPO example: {"prompt_input_ids", "chosen_input_ids", "rejected_input_ids"}.

    Same rules as tokenize_sft: no special tokens but the EOS ending each response; the prompt
    is cut from the left to `max_prompt_length` tokens (when given), then so prompt + the longer
    response fit in max_length; a response is never cut (ValueError naming pair_id when one
    cannot fit with at least one prompt token).
    """
    pair_id = example.get("pair_id")
    prompt_ids = _ids(tokenizer, example["prompt"])
    if not prompt_ids:
        raise ValueError(f"pair {pair_id!r}: the prompt has no tokens")
    if max_prompt_length:
        prompt_ids = prompt_ids[-max_prompt_length:]
    chosen_ids = _response_ids(tokenizer, example["chosen"], pair_id)
    rejected_ids = _response_ids(tokenizer, example["rejected"], pair_id)
    prompt_ids = _fit_prompt(prompt_ids, max(len(chosen_ids), len(rejected_ids)), max_length, pair_id)
    return {"prompt_input_ids": prompt_ids, "chosen_input_ids": chosen_ids, "rejected_input_ids": rejected_ids}
