"""Measures with known truth, per persona type.

    pair_logprobs(model, rows, mode) + ranked_first(...)  does the implicit reward rank the user's
                                                          chosen response first? (two steps, so a
                                                          model that is both a policy and a
                                                          reference is scored once)
    compliance(rows, responses, types)                    {row_id: True/False}: is a generated answer
                                                          in the user's style (the style program)?
    rate_by_type(rows, ok, majority)                      {type: rate}, plus "minority" and "all"
    bootstrap_by_prompt(rows, ok_a, ok_b, group, ...)     difference a - b with a 95 % CI, test
                                                          prompts resampled (rows of one prompt
                                                          move together)
    judge_agreement(outcomes, ok_test, ok_base)           how often the LLM judge's personalization
                                                          verdict sides with the style program
    persona_axes(persona)                                 which length and form a persona sentence
                                                          names (for PI accuracy against the truth)

Preference accuracy uses DPO's implicit reward r(x, y) = log pi(y | x) - log pi_ref(y | x); a pair
is ranked right when r(x, chosen) > r(x, rejected). The input x is built as for generation
(tailoring.templates.inference_input) in one of three modes: "persona" (the Persona line of PT
models), "plain" (the persona appended to the prompt in words, for a model trained without
personas) and "none" (no persona).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from typing import Callable

from persona_ray.evaluation.pairwise import percentile
from persona_ray.tailoring.templates import format_response, inference_input
from persona_ray.world.spec import PersonaType
from persona_ray.world.style import style_of

MODES = ("persona", "plain", "none")
MINORITY = "minority"  # every type but the first (the majority), pooled


def model_input(row: dict, mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    persona = None if mode == "none" else row["chosen_persona"]
    return inference_input(row["prompt"], persona, persona_template=mode == "persona")


def response_logprobs(model, tokenizer, model_input_text: str, responses: list[str]) -> list[float]:
    """Sum of log-probabilities of each response's tokens (EOS included) after the input, the
    responses scored in one right-padded batch."""
    import torch

    prompt_ids = tokenizer(model_input_text, add_special_tokens=False)["input_ids"]
    sequences = [prompt_ids + tokenizer(format_response(r, tokenizer.eos_token), add_special_tokens=False)["input_ids"]
                 for r in responses]
    width = max(len(s) for s in sequences)
    ids = torch.tensor([s + [0] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    picked = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    # Position t predicts token t+1: response tokens start at index len(prompt_ids).
    return [float(picked[i, len(prompt_ids) - 1:len(s) - 1].sum()) for i, s in enumerate(sequences)]


def pair_logprobs(model_path: str, rows: list[dict], mode: str) -> dict[str, tuple[float, float]]:
    """{pair_id: (log p(chosen | x), log p(rejected | x))} under one model, x built by `mode`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    found = {}
    for row in rows:
        chosen, rejected = response_logprobs(model, tokenizer, model_input(row, mode), [row["chosen"], row["rejected"]])
        found[row["pair_id"]] = (chosen, rejected)
    return found


def ranked_first(policy: dict[str, tuple[float, float]], reference: dict[str, tuple[float, float]]) -> dict[str, bool]:
    """{pair_id: r(x, chosen) > r(x, rejected)}, r = log pi - log pi_ref (DPO's implicit reward)."""
    return {rid: (policy[rid][0] - reference[rid][0]) > (policy[rid][1] - reference[rid][1]) for rid in policy}


def rate_by_type(rows: list[dict], ok: dict[str, bool], majority: str) -> dict[str, dict]:
    """{type | "minority" | "all": {"n", "correct", "rate"}} over rows whose pair_id is in `ok`;
    "minority" pools every type but `majority`."""
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        if row["pair_id"] not in ok:
            continue
        keys = [row["chosen_type"], "all"] + ([MINORITY] if row["chosen_type"] != majority else [])
        for key in keys:
            tally[key][0] += 1
            tally[key][1] += int(ok[row["pair_id"]])
    return {key: {"n": n, "correct": c, "rate": c / n} for key, (n, c) in tally.items()}


def compliance(rows: list[dict], responses: dict[str, str], types: list[PersonaType]) -> dict[str, bool]:
    """{pair_id: the answer to that row is in its user's style}; rows without an answer are left out."""
    style = {t.name: t.style for t in types}
    ok = {}
    for row in rows:
        text = responses.get(row["pair_id"])
        if text is None:
            continue
        found = style_of(text)
        ok[row["pair_id"]] = found is not None and found.name == style[row["chosen_type"]]
    return ok


def bootstrap_by_prompt(rows: list[dict], ok_a: dict[str, bool], ok_b: dict[str, bool],
                        group: Callable[[dict], bool], n_boot: int = 1000, seed: int = 0) -> dict:
    """Rate of a minus rate of b over the rows in `group`, with a percentile 95 % CI from resampling
    test prompts with replacement. {"n_rows", "n_prompts", "a", "b", "diff", "lo", "hi"}."""
    by_prompt: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for row in rows:
        rid = row["pair_id"]
        if group(row) and rid in ok_a and rid in ok_b:
            by_prompt[row["prompt"]].append((int(ok_a[rid]), int(ok_b[rid])))
    prompts = sorted(by_prompt)
    if not prompts:
        return {"n_rows": 0, "n_prompts": 0, "a": None, "b": None, "diff": None, "lo": None, "hi": None}

    def rates(chosen: list[str]) -> tuple[float, float]:
        pairs = [p for prompt in chosen for p in by_prompt[prompt]]
        return sum(a for a, _ in pairs) / len(pairs), sum(b for _, b in pairs) / len(pairs)

    a, b = rates(prompts)
    rng = random.Random(seed)
    diffs = sorted(x - y for x, y in (rates([rng.choice(prompts) for _ in prompts]) for _ in range(n_boot)))
    return {"n_rows": sum(len(v) for v in by_prompt.values()), "n_prompts": len(prompts), "a": a, "b": b,
            "diff": a - b, "lo": percentile(diffs, 0.025), "hi": percentile(diffs, 0.975)}


def judge_agreement(outcomes: dict[str, str], ok_test: dict[str, bool], ok_base: dict[str, bool]) -> dict:
    """Over rows where exactly one of the two answers is in the user's style: how often the judge's
    both-order personalization outcome ("test" / "base" / "tie" / "unparseable") names that one."""
    counts = {"decidable": 0, "agree": 0, "disagree": 0, "tie": 0, "unparseable": 0}
    for rid, outcome in outcomes.items():
        if rid not in ok_test or rid not in ok_base or ok_test[rid] == ok_base[rid]:
            continue
        counts["decidable"] += 1
        right = "test" if ok_test[rid] else "base"
        key = "agree" if outcome == right else outcome if outcome in ("tie", "unparseable") else "disagree"
        counts[key] += 1
    counts["agreement"] = counts["agree"] / counts["decidable"] if counts["decidable"] else None
    return counts


# Words a persona uses for each value of the two style axes. A persona naming neither value of
# an axis (or both) does not say it; PI accuracy counts that as a miss.
AXIS_WORDS = {
    "length": {"short": r"brief|short|concise|quick|succinct|one[- ]sentence|two[- ]sentence|to the point|"
                        r"minimal|little time|busy|skim",
               "long": r"detail|thorough|comprehensive|in[- ]depth|extensive|elaborat|context|full|complete|"
                       r"patient|explanation|background"},
    # "sentence": a one- or two-sentence answer is prose (the brief-prose type's own persona says
    # nothing else about form; without it a perfect PI scored 0 on that type's form).
    "form": {"steps": r"step|numbered|list|bullet|sequence|checklist|instructions",
             "prose": r"paragraph|prose|narrative|flowing|connected|essay|story|sentence"},
}


NEGATED = re.compile(r"\b(?:no|not|without|never|avoids?|avoiding)\s+(?:\w+\s+)?\w+")  # "no extra detail"


def persona_axes(persona: str) -> dict[str, str | None]:
    """{"length": "short" | "long" | None, "form": "steps" | "prose" | None} named by the persona
    (words after a negation do not count)."""
    text = NEGATED.sub(" ", persona.lower())
    named = {}
    for axis, values in AXIS_WORDS.items():
        hits = [value for value, pattern in values.items() if re.search(pattern, text)]
        named[axis] = hits[0] if len(hits) == 1 else None
    return named


def pi_accuracy(rows: list[dict], types: list[PersonaType]) -> dict:
    """Per axis and side: the share of inferred personas naming the true value of the side's type.
    `rows` carry the inferred personas in chosen_persona / rejected_persona."""
    truth = {t.name: {"length": t.length, "form": t.form} for t in types}
    result = {}
    for side in ("chosen", "rejected"):
        for axis in AXIS_WORDS:
            hits = [persona_axes(row[f"{side}_persona"])[axis] == truth[row[f"{side}_type"]][axis] for row in rows]
            result[f"{side}_{axis}"] = sum(hits) / len(hits) if hits else None
        both = [persona_axes(row[f"{side}_persona"]) == truth[row[f"{side}_type"]] for row in rows]
        result[f"{side}_both"] = sum(both) / len(both) if both else None
    result["n"] = len(rows)
    return result
