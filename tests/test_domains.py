"""Per-domain evaluation protocol: system personas, the mnemonic prime, the judge's task and the
repetition filter — and how generate and judge use them (no Ray, no engine)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from persona_ray.core import storage
from persona_ray.core.persona import validate_persona
from persona_ray.core.shards import ShardWriter
from persona_ray.evaluation.domains import (
    SYSTEM_PERSONAS,
    mnemonic_term,
    repetitive,
    response_prime,
    system_persona,
)
from persona_ray.evaluation.generate import RESPONSE_SCHEMA, GenerateConfig, _records, build_requests
from persona_ray.evaluation.judge import Comparison, JudgeConfig, build_all_requests


@pytest.mark.parametrize("prompt, term", [
    ('Write a mnemonic to help remember the meaning of the word "obfuscate".', "obfuscate"),
    ("Give me a memory trick for 'laconic'", "laconic"),
    ("negligible", "negligible"),
    ("red herring", "red herring"),
    ("How do I remember what this word means?", None),  # a question, no term named
])
def test_mnemonic_term(prompt, term):
    assert mnemonic_term(prompt) == term


def test_prime_only_for_mnemonic_prompts_that_name_a_term():
    assert response_prime('Remember the word "obfuscate".', "mnemonic") == "Obfuscate sounds like"
    assert response_prime("negligible", "mnemonic") == "Negligible sounds like"
    assert response_prime('Remember the word "obfuscate".', "safety_qa") is None
    assert response_prime("How do I remember this?", "mnemonic") is None


def test_every_system_persona_is_a_valid_persona_and_unknown_domains_get_the_default():
    assert all(validate_persona(p).valid for p in SYSTEM_PERSONAS.values())
    assert system_persona("mnemonic") == SYSTEM_PERSONAS["mnemonic"]
    assert system_persona("no-such-domain") == system_persona(None) and validate_persona(system_persona(None)).valid


def test_repetition_filter_on_realistic_outputs():
    normal = ("To get rid of mold, open a window, wear gloves, and spray the spots with diluted bleach. "
              "Let it sit for ten minutes, scrub with a brush, rinse, and dry the ceiling with a fan. "
              "If the patch is larger than a square meter, call a professional.")
    looping = ("I'm sorry, I can't help with that. " * 8).strip()
    half = normal + " " + ("You should ask a doctor about it. " * 6).strip()
    assert not repetitive(normal)
    assert repetitive(looping)
    assert repetitive(half)  # a good start that falls into a loop
    assert not repetitive("Yes. Yes. Yes.")  # too short to call
    # A numbered list whose items share a few words is not a loop.
    steps = ("1. Preheat the oven to 180 degrees. 2. Mix the flour with the sugar and a pinch of salt. "
             "3. Add the eggs one at a time and mix the batter until smooth. 4. Pour the batter into the tin. "
             "5. Bake for 35 minutes, then let the cake cool in the tin.")
    assert not repetitive(steps)


def _cfg(**kw) -> GenerateConfig:
    return GenerateConfig(**{"data": "d", "output": "o", "engine": {"model": "m"}, "model_id": "M", **kw})


ROWS = [{"pair_id": "m1", "prompt": 'Write a mnemonic for the word "obfuscate".', "domain": "mnemonic",
         "chosen_persona": "The user is a visual learner and prefers vivid images.",
         "rejected_persona": "The user is busy and prefers short cues."},
        {"pair_id": "s1", "prompt": "Is it safe to mix bleach and vinegar?", "domain": "safety_qa",
         "chosen_persona": "The user is careful and prefers clear warnings.",
         "rejected_persona": "The user is busy and prefers one-line answers."}]


def test_generate_primes_mnemonic_answers_and_keeps_the_prime_in_the_saved_response():
    requests, quarantine = build_requests(ROWS, _cfg(persona_sources=["gold-chosen", "system"]), [], set())
    assert not quarantine
    by_key = {(r["row_id"], r["persona_source"]): r for r in requests}
    mnemonic = by_key[("m1", "gold-chosen")]
    assert mnemonic["prompt"].endswith("\nResponse: Obfuscate sounds like") and mnemonic["prime"] == "Obfuscate sounds like"
    assert by_key[("s1", "gold-chosen")]["prompt"].endswith("\nResponse:") and by_key[("s1", "gold-chosen")]["prime"] == ""
    # The system source takes each row's domain persona unless one is configured.
    assert by_key[("m1", "system")]["persona"] == SYSTEM_PERSONAS["mnemonic"]
    assert by_key[("s1", "system")]["persona"] == SYSTEM_PERSONAS["safety_qa"]
    fixed, _ = build_requests(ROWS, _cfg(persona_sources=["system"], system_persona="The user is x and prefers y."),
                              [], set())
    assert {r["persona"] for r in fixed} == {"The user is x and prefers y."}
    unprimed, _ = build_requests(ROWS[:1], _cfg(prime_mnemonics=False), [], set())
    assert unprimed[0]["prompt"].endswith("\nResponse:") and unprimed[0]["prime"] == ""

    engine_rows = [{**r, "generated_text": " \"OB-FUSS-CAT\": a fussy cat scribbles until nothing is clear.",
                    "finish_reason": "stop", "error": ""} for r in requests[:2]]
    batch = {k: np.array([row[k] for row in engine_rows], dtype=object) for k in engine_rows[0]}
    saved = _records(batch)["response"]
    assert saved[0] == 'Obfuscate sounds like "OB-FUSS-CAT": a fussy cat scribbles until nothing is clear.'


def _write(folder, model_id, responses: dict[str, str]):
    writer = ShardWriter(storage.join(str(folder), model_id, "responses"), RESPONSE_SCHEMA, 100)
    writer.add(pa.Table.from_pylist([
        {"row_id": rid, "persona_source": "gold-chosen", "persona": "The user is given a persona.", "model_id": model_id,
         "prompt": "", "input": "", "response": text, "finish_reason": "stop", "error": ""}
        for rid, text in responses.items()], schema=RESPONSE_SCHEMA))
    writer.close()


def test_judge_leaves_out_repetitive_rows_and_tells_the_judge_the_mnemonic_task(tmp_path):
    looping = ("Please consult a professional about this. " * 8).strip()
    _write(tmp_path, "PT", {"m1": "Obfuscate sounds like ob-fuss-cat: a fussy cat muddles everything it touches.",
                            "s1": looping})
    _write(tmp_path, "DPO", {"m1": "Obfuscate means to make unclear.", "s1": "No: together they release chlorine gas."})
    cfg = JudgeConfig(responses=str(tmp_path), data="d", output="o", comparisons=[Comparison(test="PT", base="DPO")])
    requests, skipped = build_all_requests(cfg, ROWS)
    assert [(s["row_id"], s["reason"]) for s in skipped] == [("s1", "test response repetitive")]
    assert {r["row_id"] for r in requests} == {"m1"}
    assert all("Write a keyword mnemonic for the vocabulary term in this prompt.\n\nWrite a mnemonic" in r["prompt"]
               for r in requests)
    kept, skipped = build_all_requests(cfg.model_copy(update={"skip_repetitive": False}), ROWS)
    assert not skipped and {r["row_id"] for r in kept} == {"m1", "s1"}
    safety = next(r for r in kept if r["row_id"] == "s1")["prompt"]
    assert "###Instruction:\nIs it safe to mix bleach and vinegar?" in safety  # no task line outside mnemonic
