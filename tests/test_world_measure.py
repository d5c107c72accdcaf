"""Persona-world measures and the model writer's selection, on hand-made data with known answers."""

from __future__ import annotations

import pytest

from persona_ray.world.measure import (bootstrap_by_prompt, compliance, judge_agreement, model_input, persona_axes,
                                       pi_accuracy, rate_by_type)
from persona_ray.world.spec import DEFAULT_TYPES
from persona_ray.world.synthetic import synthetic_response
from persona_ray.world.write import trim_cut_answer

NAMES = [t.name for t in DEFAULT_TYPES]
STYLE = {t.name: t.style for t in DEFAULT_TYPES}


def _rows(prompts: int) -> list[dict]:
    return [{"pair_id": f"p{p}-{t.name}", "prompt": f"question {p}?", "chosen_type": t.name,
             "chosen_persona": t.persona} for p in range(prompts) for t in DEFAULT_TYPES]


def test_compliance_uses_the_style_program_per_user():
    rows = _rows(2)
    answers = {row["pair_id"]: synthetic_response(row["prompt"], "long-prose") for row in rows}  # majority style
    del answers["p1-brief-steps"]  # no answer: left out, not counted as wrong
    ok = compliance(rows, answers, DEFAULT_TYPES)
    assert len(ok) == 7
    assert [ok[f"p0-{n}"] for n in NAMES] == [True, False, False, False]
    rates = rate_by_type(rows, ok, majority=NAMES[0])
    assert rates[NAMES[0]] == {"n": 2, "correct": 2, "rate": 1.0}
    assert rates["minority"] == {"n": 5, "correct": 0, "rate": 0.0}
    assert rates["all"]["n"] == 7 and rates[NAMES[-1]]["n"] == 1


def test_bootstrap_by_prompt_resamples_prompts_and_brackets_the_difference():
    rows = _rows(40)
    ok_a = {row["pair_id"]: True for row in rows}
    ok_b = {row["pair_id"]: int(row["prompt"].split()[1][:-1]) % 2 == 0 for row in rows}  # half the prompts
    result = bootstrap_by_prompt(rows, ok_a, ok_b, lambda row: row["chosen_type"] == NAMES[-1], n_boot=500)
    assert result["n_prompts"] == 40 and result["n_rows"] == 40
    assert result["a"] == 1.0 and result["b"] == 0.5 and result["diff"] == 0.5
    assert 0.2 < result["lo"] < 0.5 < result["hi"] < 0.8
    same = bootstrap_by_prompt(rows, ok_a, ok_a, lambda row: True, n_boot=100)
    assert same["diff"] == same["lo"] == same["hi"] == 0.0
    assert bootstrap_by_prompt(rows, ok_a, ok_b, lambda row: False)["diff"] is None


def test_judge_agreement_counts_only_rows_the_style_program_decides():
    ok_test = {"a": True, "b": True, "c": False, "d": True, "e": True}
    ok_base = {"a": False, "b": False, "c": True, "d": True, "e": False}
    outcomes = {"a": "test", "b": "tie", "c": "test", "d": "base", "e": "unparseable"}
    counts = judge_agreement(outcomes, ok_test, ok_base)
    assert counts == {"decidable": 4, "agree": 1, "disagree": 1, "tie": 1, "unparseable": 1, "agreement": 0.25}


@pytest.mark.parametrize("persona,axes", [
    (DEFAULT_TYPES[0].persona, {"length": "long", "form": "prose"}),
    (DEFAULT_TYPES[1].persona, {"length": "short", "form": "prose"}),  # "a one- or two-sentence answer"
    (DEFAULT_TYPES[2].persona, {"length": "long", "form": "steps"}),
    (DEFAULT_TYPES[3].persona, {"length": "short", "form": "steps"}),
    ("The user is curious and prefers answers about animals.", {"length": None, "form": None}),
    ("The user is busy and prefers a detailed list.", {"length": None, "form": "steps"}),  # both lengths: not said
])
def test_persona_axes(persona, axes):
    assert persona_axes(persona) == axes


def test_each_types_own_persona_names_its_length_and_form():
    """A PI model that writes the gold sentence of the right type scores 1 on both axes."""
    for t in DEFAULT_TYPES:
        assert persona_axes(t.persona) == {"length": t.length, "form": t.form}, t.name
    rows = [{"chosen_type": a.name, "rejected_type": b.name, "chosen_persona": a.persona, "rejected_persona": b.persona}
            for a in DEFAULT_TYPES for b in DEFAULT_TYPES if a != b]
    assert all(v == 1.0 for k, v in pi_accuracy(rows, DEFAULT_TYPES).items() if k != "n")


def test_pi_accuracy_against_the_truth():
    rows = [{"chosen_type": NAMES[3], "rejected_type": NAMES[0],
             "chosen_persona": "The user is in a hurry and prefers three short numbered steps.",
             "rejected_persona": "The user is curious and prefers answers about animals."}]
    acc = pi_accuracy(rows, DEFAULT_TYPES)
    assert acc["chosen_length"] == acc["chosen_form"] == acc["chosen_both"] == 1.0
    assert acc["rejected_length"] == acc["rejected_both"] == 0.0 and acc["n"] == 1


def test_model_input_modes():
    row = {"prompt": "How do I boil an egg?", "chosen_persona": "The user is busy and prefers short answers."}
    assert model_input(row, "persona") == ("Prompt: How do I boil an egg?\nPersona: The user is busy and prefers "
                                           "short answers.\nResponse:")
    assert model_input(row, "none") == "Prompt: How do I boil an egg?\nResponse:"
    assert "I am busy" in model_input(row, "plain") and "Persona:" not in model_input(row, "plain")
    with pytest.raises(ValueError, match="mode"):
        model_input(row, "gold")


@pytest.mark.parametrize("text,reason,expected", [
    ("One. Two. Three is cut", "length", "One. Two."),
    ("One. Two. Three is cut", "stop", "One. Two. Three is cut"),
    ("1. Mix it.\n2. Bake it.\n3. Let it", "length", "1. Mix it.\n2. Bake it."),
    ("no sentence end at all", "length", ""),
])
def test_trim_cut_answer(text, reason, expected):
    assert trim_cut_answer(text, reason) == expected


def test_world_build_from_the_command_line(tmp_path):
    """`persona-ray world build` (synthetic writer: no model, no Ray) writes the splits, the
    reusable responses file and the config; a second world reads that file back (writer file)."""
    import json

    from click.testing import CliRunner

    from persona_ray.cli import app
    from persona_ray.dataset.splits import read_split

    result = CliRunner().invoke(app, ["world", "build", "--output", str(tmp_path / "w"), "--max-prompts", "40"])
    assert result.exit_code == 0, result.output
    # A Ray cluster left by an earlier test in this worker may print its workers' log lines into
    # the same captured stdout, so the summary is the last line that is a JSON object.
    summary_line = [line for line in result.output.splitlines() if line.startswith("{")][-1]
    summary = json.loads(summary_line)["build"]
    assert summary["prompts_kept"] == 40 and sum(summary["prompts_by_split"].values()) == 40
    assert len(read_split(str(tmp_path / "w" / "data" / "gold"), "test")) == 4 * summary["prompts_by_split"]["test"]
    saved = json.loads((tmp_path / "w" / "data" / "responses.json").read_text())
    assert saved["writer"] == "synthetic" and len(saved["responses"]) == 40

    again = CliRunner().invoke(app, ["world", "build", "--output", str(tmp_path / "w2"), "--writer", "file",
                                      "--responses-file", str(tmp_path / "w" / "data" / "responses.json")])
    assert again.exit_code == 0, again.output
    assert read_split(str(tmp_path / "w2" / "data" / "gold"), "test") == \
        read_split(str(tmp_path / "w" / "data" / "gold"), "test")  # same responses, same seed: same world


def test_writer_file_without_a_file_is_refused():
    from persona_ray.world.experiment import WorldConfig

    with pytest.raises(ValueError, match="responses_file"):
        WorldConfig(output="x", writer="file")


def test_read_prompts_from_text_and_jsonl(tmp_path):
    from persona_ray.world.experiment import read_prompts

    (tmp_path / "q.txt").write_text("How do I tie a tie?\n\n  How do I tie   a tie?\nWhy is the sky blue?\n")
    assert read_prompts(str(tmp_path / "q.txt")) == ["How do I tie a tie?", "Why is the sky blue?"]
    (tmp_path / "q.jsonl").write_text('{"prompt": "A?"}\n{"id": 1}\n{"prompt": "B?"}\n')
    assert read_prompts(str(tmp_path / "q.jsonl")) == ["A?", "B?"]


def test_the_writer_keeps_only_confirmed_answers_and_reasks_the_rest(ray_local, monkeypatch):
    """The selection and re-ask rounds of write_responses, with the engine replaced by a stand-in
    that answers in the asked style only from the second round on for one prompt (the real
    engine path is the project's vLLM engine, run by the smollm2 benchmark)."""
    import ray.data

    from persona_ray.engines.settings import EngineSettings
    from persona_ray.world.write import STYLE_INSTRUCTIONS, WritingSettings, write_responses

    def fake_generate(self, ds, *, regex=None, choice=None, sampling=None):
        def answer(row):
            style = next(s for s, text in STYLE_INSTRUCTIONS.items() if row["prompt"].endswith(text))
            stubborn = row["question"] == "Stubborn?" and sampling.temperature == 0.0
            text = synthetic_response(row["question"], "short-prose" if stubborn else style)
            return {**row, "generated_text": text, "finish_reason": "stop", "error": ""}
        return ds.map(answer)

    monkeypatch.setattr(EngineSettings, "generate", fake_generate)
    responses, counts = write_responses(["Easy?", "Stubborn?"], DEFAULT_TYPES, WritingSettings(retries=1))
    assert all(len(responses[p]) == 4 for p in ("Easy?", "Stubborn?"))
    assert counts["long-prose"] == {"asked": 2, "kept": 2, "kept_by_round": [1, 1]}
    assert counts["short-prose"] == {"asked": 2, "kept": 2, "kept_by_round": [2, 0]}
    _, none_again = write_responses(["Stubborn?"], DEFAULT_TYPES, WritingSettings(retries=0))
    assert none_again["long-steps"] == {"asked": 1, "kept": 0, "kept_by_round": [0]}


def test_beavertails_prompts_are_a_second_question_set(real_personas, tmp_path):
    """The world can be built on the BeaverTails prompts of ../shared/data (config `prompts`);
    here with the synthetic writer, so only the reading and the splits are checked."""
    from persona_ray.world.experiment import World, WorldConfig, read_prompts

    prompts = read_prompts(str(real_personas))
    assert 400 < len(prompts) <= 499 and all(p == " ".join(p.split()) for p in prompts)
    stages = World(WorldConfig(output=str(tmp_path / "bt"), prompts=str(real_personas), max_prompts=60)).run("build")
    assert stages["build"]["prompts_kept"] == 60 and stages["build"]["pairs"]["train"] == 4 * 42
