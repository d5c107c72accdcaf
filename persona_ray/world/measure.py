"""Measures with known truth: does a model rank each user's chosen response first?

Preference accuracy uses the model's implicit reward, as DPO defines it:
    r(x, y) = log pi(y | x) - log pi_ref(y | x)
and a pair counts as ranked right when r(x, chosen) > r(x, rejected). The input x is built with
the same template as training (tailoring.templates.format_input): with the user's persona for
persona-tailored models, without one for plain models. Accuracy is reported per persona type.
"""

from __future__ import annotations

from collections import defaultdict

from persona_ray.tailoring.templates import format_input, format_response


def response_logprob(model, tokenizer, model_input: str, response: str) -> float:
    """Sum of log-probabilities of the response tokens (EOS included) after the input."""
    import torch

    prompt_ids = tokenizer(model_input, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(format_response(response, tokenizer.eos_token), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    targets = ids[0, 1:]
    picked = logprobs[torch.arange(len(targets)), targets]
    return float(picked[len(prompt_ids) - 1:].sum())


def preference_accuracy(policy_path: str, reference_path: str, rows: list[dict], with_persona: bool) -> dict:
    """{persona type: {"n", "correct", "accuracy"}} plus "all", over rows with chosen_type."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    policy = AutoModelForCausalLM.from_pretrained(policy_path).eval()
    reference = AutoModelForCausalLM.from_pretrained(reference_path).eval()
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        model_input = format_input(row["prompt"], row["chosen_persona"] if with_persona else None)
        margin = 0.0
        for side, sign in (("chosen", 1), ("rejected", -1)):
            reward = (response_logprob(policy, tokenizer, model_input, row[side])
                      - response_logprob(reference, tokenizer, model_input, row[side]))
            margin += sign * reward
        for key in (row["chosen_type"], "all"):
            tally[key][0] += 1
            tally[key][1] += int(margin > 0)
    return {key: {"n": n, "correct": c, "accuracy": c / n} for key, (n, c) in tally.items()}
