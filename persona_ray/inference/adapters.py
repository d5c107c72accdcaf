"""Adapters from public preference-dataset schemas to the pair contract (see schema.py).

Formats
    flat          prompt, chosen, rejected (+ optional id / pair_id, domain, source)
    pku_saferlhf  prompt, response_0, response_1, better_response_id   (BeaverTails / PKU-SafeRLHF)
    hh_rlhf       chosen, rejected: whole dialogues sharing every turn but the last reply
    shp           post_id, history, human_ref_A, human_ref_B, labels (1 = A preferred)
    auto          pick one of the above from the row's keys
"""

from __future__ import annotations

from typing import Any, Callable

from persona_ray.core.schema import ContractError, content_id, row_id, text_field

FORMATS = ("auto", "flat", "pku_saferlhf", "hh_rlhf", "shp")
DEFAULT_DOMAINS = {"pku_saferlhf": "safety_qa", "hh_rlhf": "dialogue", "shp": "reddit"}

_HUMAN = "\n\nHuman:"
_ASSISTANT = "\n\nAssistant:"


def detect_format(row: dict[str, Any]) -> str:
    keys = set(row)
    if {"response_0", "response_1", "better_response_id"} <= keys:
        return "pku_saferlhf"
    if {"human_ref_A", "human_ref_B", "labels"} <= keys:
        return "shp"
    if {"chosen", "rejected"} <= keys and "prompt" not in keys and _is_dialogue(row["chosen"]):
        return "hh_rlhf"
    if keys & {"prompt", "chosen", "rejected"}:
        return "flat"  # a missing prompt/chosen/rejected is then reported by name
    raise ContractError("<row>", f"unknown schema (keys: {sorted(keys)[:8]})")


def _is_dialogue(text: Any) -> bool:
    """HH-RLHF rows hold whole dialogues, which start with a human turn."""
    return isinstance(text, str) and text.lstrip().startswith(_HUMAN.strip())


def _choice(row: dict[str, Any], field: str) -> int:
    value = row.get(field)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        value = int(value)
    if isinstance(value, bool) or value not in (0, 1):
        raise ContractError(field, f"expected 0 or 1, got {value!r}")
    return int(value)


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "prompt": row.get("prompt"),
        "chosen": row.get("chosen"),
        "rejected": row.get("rejected"),
        "pair_id": row_id(row),
        "domain": row.get("domain"),
        "source": row.get("source"),
    }


def _pku(row: dict[str, Any]) -> dict[str, Any]:
    better = _choice(row, "better_response_id")
    responses = (text_field(row, "response_0"), text_field(row, "response_1"))
    return {"prompt": row.get("prompt"), "chosen": responses[better], "rejected": responses[1 - better]}


def split_dialogue(chosen: str, rejected: str) -> tuple[str, str, str]:
    """HH-RLHF: (prompt, chosen reply, rejected reply) from two whole dialogues.

    The prompt is every turn before the final "Assistant:" that both dialogues share,
    written as "Human: ...\\n\\nAssistant: ...\\n\\nHuman: ...".
    """
    shared = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        shared += 1
    cut = chosen.rfind(_ASSISTANT, 0, shared + 1)
    if cut < 0 or cut + len(_ASSISTANT) > shared:
        raise ContractError("chosen", "dialogues share no turn up to a final 'Assistant:'")
    prompt = chosen[:cut].strip()
    if not prompt.startswith(_HUMAN.strip()):
        raise ContractError("chosen", "dialogue does not start with a 'Human:' turn")
    start = cut + len(_ASSISTANT)
    return prompt, chosen[start:].strip(), rejected[start:].strip()


def _hh(row: dict[str, Any]) -> dict[str, Any]:
    prompt, chosen, rejected = split_dialogue(text_field(row, "chosen"), text_field(row, "rejected"))
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _shp(row: dict[str, Any]) -> dict[str, Any]:
    a_preferred = _choice(row, "labels") == 1
    ref_a, ref_b = text_field(row, "human_ref_A"), text_field(row, "human_ref_B")
    pair_id = None
    if row.get("post_id") is not None:
        pair_id = f"{row['post_id']}-{row.get('c_root_id_A')}-{row.get('c_root_id_B')}"
    return {
        "prompt": row.get("history"),
        "chosen": ref_a if a_preferred else ref_b,
        "rejected": ref_b if a_preferred else ref_a,
        "pair_id": pair_id,
    }


_ADAPTERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "flat": _flat,
    "pku_saferlhf": _pku,
    "hh_rlhf": _hh,
    "shp": _shp,
}


def adapt_row(row: dict[str, Any], fmt: str = "auto", source: str = "", domain: str = "") -> dict[str, Any]:
    """One input row -> a dict with the pair fields (not yet validated: see schema.check_pair).

    `source` and `domain` fill in what the row does not say; a format's usual domain
    (e.g. dialogue for hh_rlhf) comes before `domain`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"input_format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "auto":
        fmt = detect_format(row)
    pair = _ADAPTERS[fmt](row)
    pair["source"] = pair.get("source") or source or fmt
    pair["domain"] = pair.get("domain") or DEFAULT_DOMAINS.get(fmt) or domain or "safety_qa"
    if pair.get("pair_id") is not None and not isinstance(pair["pair_id"], str):
        pair["pair_id"] = str(pair["pair_id"])
    if not pair.get("pair_id") and all(isinstance(pair.get(f), str) for f in ("prompt", "chosen", "rejected")):
        pair["pair_id"] = content_id(pair["source"], pair["prompt"], pair["chosen"], pair["rejected"])
    return pair
