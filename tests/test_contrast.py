"""Contrastive persona selection (inference/contrast.py): the pool, the pick, and the scores.
The engine actor runs through the PI job in tests/test_pi_student.py (slow); these need no engine."""

from __future__ import annotations

import math

import pytest

from persona_ray.inference.contrast import Candidate, candidate_pool, select_personas

SHORT = "The user is a busy reader and prefers a short answer."
STEPS = "The user is a hands-on learner and prefers numbered steps."
PROSE = "The user is a patient reader and prefers connected paragraphs."


def _pool(*personas: str) -> list[Candidate]:
    return [Candidate(p, p, [i]) for i, p in enumerate(personas)]


def test_the_pool_keeps_valid_distinct_personas_in_order_and_drops_the_rest():
    pool = candidate_pool([
        (" " + SHORT, [1, 2], False),
        (SHORT, [3], False),                        # the same persona again (other side): kept once
        ("The user is a", [4], True),               # cut off by max_tokens
        ("no persona here", [5], False),
        (STEPS + "\nmore text", [6, 7], False),     # parsed: the sentence only
    ])
    assert [c.persona for c in pool] == [SHORT, STEPS]
    assert pool[0].token_ids == [1, 2] and pool[1].text == STEPS + "\nmore text"


def test_each_side_gets_what_its_own_prompt_explains_better_than_the_other_sides():
    pool = _pool(PROSE, SHORT, STEPS)
    # PROSE is the likeliest under both prompts (the topic, the model's habit): plain likelihood
    # would give it to both sides; the contrast gives each side the persona its prompt favours.
    logp = {"chosen": [-5.0, -9.0, -12.0], "rejected": [-5.5, -13.0, -8.0]}
    picked = select_personas(pool, logp, weight=1.0)
    assert picked["chosen"].persona == SHORT and picked["rejected"].persona == STEPS
    reranked = select_personas(pool, logp, weight=0.0)
    assert reranked["chosen"].persona == PROSE
    assert reranked["rejected"].persona != PROSE  # the near copy of the chosen one is passed over


def test_an_implausible_candidate_cannot_win_on_a_ratio_of_two_small_likelihoods():
    odd = "The user is a zebra of quartz and prefers violet humming."
    pool = [Candidate(SHORT, SHORT, [0, 1]), Candidate(STEPS, STEPS, [2, 3]), Candidate(odd, odd, [4, 5])]
    # per token: SHORT -1 / -4 (chosen / rejected prompt), STEPS -3 / -1, odd -9 / -20 (a sample)
    logp = {"chosen": [-2.0, -6.0, -18.0], "rejected": [-8.0, -2.0, -40.0]}
    assert select_personas(pool, logp, weight=1.0, plausibility=0.0)["chosen"].persona == odd  # +22
    picked = select_personas(pool, logp, weight=1.0, plausibility=0.1)  # floor: 2.3 nats a token below the best
    assert picked["chosen"].persona == SHORT and picked["rejected"].persona == STEPS


def test_the_two_sides_differ_when_the_pool_has_two_personas_and_not_otherwise():
    logp = {"chosen": [-3.0, -4.0], "rejected": [-3.0, -4.0]}  # no signal at all
    picked = select_personas(_pool(SHORT, STEPS), logp, weight=1.0)
    assert picked["chosen"].persona != picked["rejected"].persona
    alone = select_personas(_pool(SHORT), {"chosen": [-1.0], "rejected": [-2.0]}, weight=1.0)
    assert alone["chosen"].persona == alone["rejected"].persona == SHORT
    near = SHORT.replace("a short answer", "a short reply")
    same = select_personas(_pool(SHORT, near), {"chosen": [-1.0, -2.0], "rejected": [-2.0, -1.0]}, weight=1.0)
    assert same["rejected"].persona == near  # only near copies left: the best of them, not nothing
    assert select_personas([], {"chosen": [], "rejected": []}, weight=1.0) == {}


def test_sequence_logprobs_match_scoring_each_candidate_from_scratch():
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from persona_ray.core.models import resolve_model
    from persona_ray.inference.contrast import sequence_logprobs

    model = AutoModelForCausalLM.from_pretrained(resolve_model("tiny"), dtype=torch.float32).eval()
    prompt, candidates = [5, 9, 14, 3, 7], [[11, 12, 13], [20], [4, 4, 6, 8]]
    fast = sequence_logprobs(model, prompt, candidates)
    for ids, got in zip(candidates, fast):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + ids])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        want = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(ids))
        assert math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-4), (ids, got, want)
