"""The persona world: its style program, its users and its pairs, where the truth is known."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from persona_ray.core.persona import validate_persona
from persona_ray.testing.tiny_model import LINEAR_LAYERS
from persona_ray.world.build import build_world, confirmed_responses, split_by_prompt, world_prompts
from persona_ray.world.spec import DEFAULT_TYPES, PersonaType, check_types
from persona_ray.world.style import style_of
from persona_ray.world.synthetic import synthetic_response

LONG_PROSE = ("Basil likes warmth and plenty of light, so a south-facing window is the best spot you have. "
              "Water it when the top of the soil feels dry rather than on a fixed schedule. "
              "Pinch off the top leaves every week so the plant grows bushy instead of tall. "
              "Turn the pot every few days so all sides get the sun and the stems grow straight.")
SHORT_STEPS = "1. Put it in your sunniest window.\n2. Water when the soil is dry.\n3. Pinch the tips weekly."
LONG_STEPS = "\n".join(f"{i}) {s}" for i, s in enumerate(LONG_PROSE.split(". "), start=1))

STYLE_CASES = [
    (LONG_PROSE, "long-prose"),
    ("Keep it in a sunny window and water it when the soil is dry.", "short-prose"),
    ("Keep it in a sunny window. Water it when the soil is dry.", "short-prose"),
    (SHORT_STEPS, "short-steps"),
    (LONG_STEPS, "long-steps"),
    ("One. Two. Three.", None),                                   # three sentences: neither short nor long
    ("1. Only one numbered line, then prose. It goes on.", None),   # one numbered line is not a list
    (" ".join(["word"] * 50) + ".", None),                          # one sentence but 50 words: not short
    ("Short. " * 5, None),                                          # five sentences but few words: not long
]


@pytest.mark.parametrize("text,expected", STYLE_CASES)
def test_style_program(text, expected):
    found = style_of(text)
    assert (found.name if found else None) == expected


def test_default_types_are_valid_personas_with_skewed_shares():
    types = check_types(DEFAULT_TYPES)
    assert [t.share for t in types] == sorted((t.share for t in types), reverse=True)  # majority first
    assert types[0].share >= 0.5 and types[-1].share <= 0.1
    assert all(validate_persona(t.persona).valid for t in types)
    assert len({t.style for t in types}) == 4


def test_bad_types_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="shares must sum to 1"):
        check_types(DEFAULT_TYPES[:3])
    with pytest.raises(ValueError, match="persona is not valid"):
        PersonaType(name="x", length="short", form="prose", share=1.0, persona="The user is a Catholic and prefers "
                    "short answers.")


def test_every_bundled_prompt_has_a_synthetic_response_in_every_style():
    prompts = world_prompts()
    assert len(prompts) >= 190 and len(set(prompts)) == len(prompts)
    for prompt in prompts:
        for persona_type in DEFAULT_TYPES:
            found = style_of(synthetic_response(prompt, persona_type.style))
            assert found and found.name == persona_type.style, (prompt, persona_type.style)


SPLITS = {"train": 0.7, "val": 0.1, "test": 0.2}


def _world(prompts=None, users_per_prompt=4, seed=0):
    responses = confirmed_responses(prompts or world_prompts(), DEFAULT_TYPES, synthetic_response)
    return build_world(responses, DEFAULT_TYPES, users_per_prompt, SPLITS, seed)


def test_pairs_conflict_across_users_and_follow_the_shares():
    prompts = world_prompts()
    splits, counts = _world()
    assert counts["prompts_kept"] == len(prompts) and counts["prompts_dropped"] == 0
    assert splits == _world()[0]  # deterministic
    by_name = {t.name: t for t in DEFAULT_TYPES}
    rows = [row for split_rows in splits.values() for row in split_rows]
    for row in rows:  # the truth, by construction
        assert style_of(row["chosen"]).name == by_name[row["chosen_type"]].style
        assert style_of(row["rejected"]).name == by_name[row["rejected_type"]].style
        assert row["chosen_type"] != row["rejected_type"]
        assert row["chosen_persona"] == by_name[row["chosen_type"]].persona
    train = splits["train"]
    assert len(train) == 4 * counts["prompts_by_split"]["train"]
    shares = Counter(row["chosen_type"] for row in train)
    for persona_type in DEFAULT_TYPES:
        assert abs(shares[persona_type.name] / len(train) - persona_type.share) < 0.06
    chosen_by_prompt: dict[str, set] = {}
    for row in train:
        chosen_by_prompt.setdefault(row["prompt"], set()).add(row["chosen"])
    conflicting = sum(len(chosen) > 1 for chosen in chosen_by_prompt.values())
    assert conflicting > 0.5 * len(chosen_by_prompt)  # without personas, the data disagree with itself


def test_test_prompts_are_asked_by_every_type_once():
    splits, counts = _world()
    by_prompt: dict[str, list[str]] = {}
    for row in splits["test"]:
        by_prompt.setdefault(row["prompt"], []).append(row["chosen_type"])
    assert len(by_prompt) == counts["prompts_by_split"]["test"] > 30
    assert all(sorted(types) == sorted(t.name for t in DEFAULT_TYPES) for types in by_prompt.values())


def test_a_prompt_missing_a_style_is_dropped_and_counted():
    def respond(prompt, style):
        return "Too vague." if prompt == "drop me?" and style == "long-steps" else synthetic_response(prompt, style)

    responses = confirmed_responses(["keep me?", "drop me?"], DEFAULT_TYPES, respond)
    assert "long-steps" not in responses["drop me?"] and len(responses["keep me?"]) == 4
    splits, counts = build_world(responses, DEFAULT_TYPES, 2, {"train": 1.0, "val": 0.0, "test": 0.0})
    assert counts["prompts_dropped"] == 1 and {row["prompt"] for row in splits["train"]} == {"keep me?"}


def test_splits_never_share_a_prompt():
    splits, _ = _world(users_per_prompt=3, seed=1)
    prompts = {name: {row["prompt"] for row in split_rows} for name, split_rows in splits.items()}
    assert not (prompts["train"] & prompts["test"]) and not (prompts["train"] & prompts["val"])
    assert not (prompts["val"] & prompts["test"])
    assert sum(len(p) for p in prompts.values()) == len(world_prompts())
    assert 0.15 < len(prompts["test"]) / len(world_prompts()) < 0.25
    assert split_by_prompt(["a", "b", "c", "d"], {"x": 0.5, "y": 0.5}, seed=3) == \
        split_by_prompt(["d", "c", "b", "a"], {"x": 0.5, "y": 0.5}, seed=3)


# DPO settings for the CI-scale world: the tiny model, every linear layer adapted, a high
# learning rate; from the base model (no SFT). PT-DPO trains with type `all` (each pair also
# teaches the rejected response's persona): with type `chosen` alone the tiny model learned the
# length axis but not form within short answers (brief-steps 0.615 over brief-prose, measured).
# No evaluation on the val split: the test measures held-out prompts itself (the measure stage).
TINY_DPO = {"max_steps": 80, "learning_rate": 5e-3, "per_device_batch_size": 8, "save_steps": 80, "max_length": 256,
            "evaluate": False,
            "lora": {"r": 16, "alpha": 32, "target_modules": list(LINEAR_LAYERS)}}


def test_response_logprobs_batched_equal_one_at_a_time(tiny_model):
    """Both sides of a pair are scored in one padded batch; padding must not change a score."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persona_ray.world.measure import ranked_first, response_logprobs

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    text = "Prompt: How do I grow basil?"
    responses = [SHORT_STEPS, LONG_PROSE, "Water it."]
    batched = response_logprobs(model, tokenizer, text, responses)
    alone = [response_logprobs(model, tokenizer, text, [r])[0] for r in responses]
    assert batched == pytest.approx(alone, abs=1e-3)
    assert all(score < 0 for score in batched) and batched[1] < batched[2]  # more tokens, lower sum
    # DPO's implicit reward: the chosen side gains more over the reference than the rejected one.
    assert ranked_first({"a": (-5.0, -9.0), "b": (-5.0, -4.0)}, {"a": (-6.0, -8.0), "b": (-6.0, -8.0)}) == \
        {"a": True, "b": False}


@pytest.mark.slow
def test_tiny_model_learns_personas_where_plain_dpo_learns_only_the_majority(ray_local, tmp_path):
    """The training path carries personas to the model: with them, every user's chosen response
    is ranked first on held-out prompts; without them, DPO serves the majority and fails the
    smallest minority. A bug in how personas reach the model would show here. The whole world
    experiment runs (build, train, measure, report; no generation at this scale)."""
    from persona_ray.world.experiment import WorldConfig, run_world

    cfg = WorldConfig(output=str(tmp_path / "world"), model="tiny", sft=None, dpo=TINY_DPO, training_type="all")
    stages = run_world(cfg)
    accuracy = stages["measure"]["preference_accuracy"]
    print("preference accuracy on held-out prompts:", accuracy)

    majority, smallest = DEFAULT_TYPES[0].name, DEFAULT_TYPES[-1].name
    measured = json.loads((tmp_path / "world" / "measure.json").read_text())
    assert all(measured["PT-DPO"][t.name]["n"] >= 30 for t in DEFAULT_TYPES)  # every test prompt, every type
    # Measured (Ray Train, type all, 80 steps, examples shuffled once with the seed), in type order
    # majority first, on the AVX2-only EPYC (2026-12-07) with the 1,024-token tiny model: PT-DPO
    # 0.949 / 0.974 / 0.974 / 1.0 and DPO 1.0 / 0.692 / 0.359 / 0.077 (with the earlier 4,096-token
    # model: PT-DPO 0.949 / 0.923 / 1.0 / 0.949, DPO 1.0 / 0.692 / 0.359 / 0.026). float32 rounding
    # differs by CPU. Before training examples were shuffled, Ray Train read them in file order (a
    # prompt's users together) and the smallest minority reached only 0.641.
    assert all(accuracy["PT-DPO"][t.name] >= 0.9 for t in DEFAULT_TYPES), accuracy
    assert accuracy["DPO"][majority] >= 0.8, accuracy
    assert accuracy["DPO"][smallest] <= 0.5, accuracy
    assert accuracy["PT-DPO"][smallest] - accuracy["DPO"][smallest] >= 0.4, accuracy
    report = (tmp_path / "world" / "report" / "report.md").read_text()
    assert "Preference accuracy on held-out pairs" in report and smallest in report
    assert json.loads((tmp_path / "world" / "config.json").read_text())["dpo"]["max_steps"] == TINY_DPO["max_steps"]
    assert run_world(cfg)["train"] == stages["train"]  # a rerun resumes: every stage already done


def test_pi_runs_once_per_pair_text_and_rows_take_their_texts_personas(tmp_path):
    """World.infer's input and output: rows of one prompt and the same two styles (users differ) are one
    PI pair; each row gets that pair's personas, and a row without a valid persona on both sides is left out."""
    import json

    from persona_ray.world.experiment import distinct_pairs, with_inferred_personas, write_pi_pairs

    row = {"prompt": "Q", "chosen": "long answer", "rejected": "short", "chosen_type": "detailed-prose",
           "rejected_type": "brief-prose", "chosen_persona": "gold c", "rejected_persona": "gold r"}
    rows = [{**row, "pair_id": "p0-u1"}, {**row, "pair_id": "p0-u2"},  # the same text, two users
            {**row, "pair_id": "p1-u1", "prompt": "R"}]
    assert [r["pair_id"] for r in distinct_pairs(rows)] == ["p0-u1", "p1-u1"]
    assert write_pi_pairs(rows, tmp_path / "in" / "pairs.jsonl") == 2
    written = [json.loads(line) for line in (tmp_path / "in" / "pairs.jsonl").read_text().splitlines()]
    assert [p["pair_id"] for p in written] == ["p0-detailed-prose-brief-prose", "p1-detailed-prose-brief-prose"]
    assert written[0] == {"pair_id": "p0-detailed-prose-brief-prose", "prompt": "Q", "chosen": "long answer",
                          "rejected": "short", "domain": "world"}
    records = [{"pair_id": "p0-detailed-prose-brief-prose", "side": "chosen", "persona": "inf c", "valid": True},
               {"pair_id": "p0-detailed-prose-brief-prose", "side": "rejected", "persona": "inf r", "valid": True},
               {"pair_id": "p1-detailed-prose-brief-prose", "side": "chosen", "persona": "inf c", "valid": True},
               {"pair_id": "p1-detailed-prose-brief-prose", "side": "rejected", "persona": "bad", "valid": False}]
    kept, lost = with_inferred_personas(rows, records)
    assert lost == 1 and [r["pair_id"] for r in kept] == ["p0-u1", "p0-u2"]
    assert {(r["chosen_persona"], r["rejected_persona"]) for r in kept} == {("inf c", "inf r")}


def test_a_pi_student_is_taught_the_gold_personas_of_a_share_of_the_training_pair_texts(tmp_path):
    from persona_ray.core.shards import read_shards
    from persona_ray.world.experiment import WorldConfig, write_teacher

    types = ["detailed-prose", "brief-prose", "brief-steps"]
    rows = [{"pair_id": f"p{i}-u{u}", "prompt": f"Q{i}", "chosen": "c", "rejected": "r", "chosen_type": types[i % 3],
             "rejected_type": types[(i + 1) % 3], "chosen_persona": f"The user is a reader of kind {i % 3} and "
             "prefers answers of that kind.", "rejected_persona": "The user is another reader and prefers the other "
             "kind of answer."} for i in range(300) for u in (1, 2)]  # two users a text: one pair text
    taught = write_teacher(rows, 0.1, str(tmp_path / "personas"))
    records = read_shards(str(tmp_path / "personas")).to_pylist()
    assert 15 <= taught <= 45 and len(records) == 2 * taught  # ~10 % of 300 texts, both sides, each once
    assert len({(r["pair_id"], r["side"]) for r in records}) == len(records)
    assert all(r["valid"] and r["model"] == "gold" for r in records)
    by_key = {(r["pair_id"], r["side"]): r["persona"] for r in records}
    for i in {int(key.split("-")[0][1:]) for key, _ in by_key}:
        key = f"p{i}-{types[i % 3]}-{types[(i + 1) % 3]}"
        assert by_key[(key, "chosen")].startswith(f"The user is a reader of kind {i % 3}")
    assert write_teacher(rows, 0.5, str(tmp_path / "personas")) == taught  # written once: a rerun keeps them
    with pytest.raises(ValueError, match="the world's teacher is its gold personas"):
        WorldConfig(output=str(tmp_path), pi_student={"teacher": "reference"})
