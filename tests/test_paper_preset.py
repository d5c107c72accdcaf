"""The paper's protocol as pipeline presets (cluster/paper/*.yaml): its values pinned against the
README's table, and `persona-ray pipeline --plan` (no Ray, no model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from persona_ray.cli import app
from persona_ray.core.settings import load_config
from persona_ray.pipeline.plan import build_plan, parameters_b
from persona_ray.pipeline.run import STAGES, PipelineConfig

REPO = Path(__file__).resolve().parents[1]
PRESETS = {name: REPO / "cluster" / "paper" / f"{name}.yaml" for name in ("hhh", "beavertails", "mnemonic")}
TWINS = {("PT-DPO", "DPO"), ("PT-SFT", "SFT"), ("PT-fs", "FS")}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_paper_preset_pins_the_papers_settings(name):
    cfg = load_config(PipelineConfig, str(PRESETS[name]))
    assert cfg.training_type == "chosen"
    assert cfg.base_model == "meta-llama/Llama-3.1-8B" and "405B" in cfg.engine.model
    assert cfg.infer["k_shot"] == 5 and cfg.fewshot_k == 5
    sft, dpo = cfg.sft, cfg.dpo
    assert (sft["learning_rate"], sft["epochs"], sft["per_device_batch_size"], sft["max_length"]) == (2e-5, 10, 1, 512)
    assert (dpo["learning_rate"], dpo["beta"], dpo["epochs"], dpo["per_device_batch_size"]) == (5e-6, 0.1, 10, 1)
    assert dpo["max_length"] == 512 and dpo["max_prompt_length"] == 128
    for job in (sft, dpo):
        assert job["eval_steps"] == "epoch" and job["keep_best"] is True
        assert job["lora"] == {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
    splits = cfg.splits
    assert splits.test_size == (499 if name == "beavertails" else 500) and splits.fewshot_size == 5
    assert splits.share_train_pool is False
    assert cfg.judge.model == "prometheus-eval/prometheus-7b-v2.0" and cfg.judge.prompt_format == "completion"
    assert cfg.judge_template == "prometheus" and cfg.judge_persona == "given"
    js = cfg.judge_sampling
    assert (js.temperature, js.top_p, js.repetition_penalty, js.max_tokens) == (1.0, 0.9, 1.03, 1024)
    assert cfg.generation.temperature == 0.0 and cfg.generation.max_tokens == 512
    pairs = {(c.test, c.base) for c in cfg.comparisons if c.base_source == "none"}
    assert pairs == TWINS  # each PT method against itself without a persona
    in_words = [c for c in cfg.comparisons if c.base_source is None]
    assert [(c.test, c.base) for c in in_words] == [("PT-DPO", "DPO")]  # §5: DPO given the persona in words
    by_id = {g.model_id: g for g in cfg.generations}
    assert by_id["FS"].mode == "fewshot" and by_id["FS"].sources == ["none"] and by_id["PT-fs"].model == "base"


def test_plan_counts_every_stage_and_estimates_gpu_hours():
    cfg = load_config(PipelineConfig, str(PRESETS["hhh"]))
    plan = build_plan(cfg)
    assert [s["stage"] for s in plan["stages"]] == list(STAGES)
    assert plan["pairs"] == 1564 and plan["test_rows"] == 500 and "plan block" in plan["sizes_from"]
    stage = {s["stage"]: s for s in plan["stages"]}
    assert stage["infer"]["accelerators"] == 8 and stage["infer"]["weights_gb"] == 405  # FP8
    assert stage["infer"]["requests"] == 2 * 1564  # a persona for each side of every pair
    assert stage["judge"]["model"].endswith("prometheus-7b-v2.0") and stage["judge"]["accelerators"] == 8
    # Judge requests: 4 comparisons × 4 persona sources × 500 rows × 2 rubrics × 2 orders.
    assert stage["judge"]["requests"] == 4 * 4 * 500 * 2 * 2
    assert all(stage[s]["accelerator_hours"] > 0 for s in ("infer", "sft", "dpo", "baseline", "generate", "judge"))
    assert stage["dpo"]["accelerator_hours"] > stage["sft"]["accelerator_hours"]  # two responses + the reference
    assert plan["accelerator_hours"] == pytest.approx(sum(s["accelerator_hours"] or 0 for s in plan["stages"]), abs=0.1)
    assert parameters_b("meta-llama/Llama-3.1-405B-Instruct-FP8") == 405 and parameters_b("smollm2") is None


def test_plan_command_prints_the_plan_and_runs_nothing(tmp_path):
    run = CliRunner().invoke(app, ["pipeline", "--config", str(PRESETS["mnemonic"]), "--output", str(tmp_path / "x"),
                                   "--plan"])
    assert run.exit_code == 0, run.output
    assert "estimated accelerator-hours" in run.output and "prometheus-7b-v2.0" in run.output
    assert not (tmp_path / "x").exists()  # nothing ran, nothing was written
    # Without a readable pairs file and without plan.pairs there is nothing to count.
    config = tmp_path / "noplan.yaml"
    config.write_text(PRESETS["hhh"].read_text().split("\nplan:")[0] + "\n")
    bad = CliRunner().invoke(app, ["pipeline", "--config", str(config), "--plan"])
    assert bad.exit_code == 2 and "pairs.input" in bad.output and "plan.pairs" in bad.output


def test_pi_cost_counts_the_real_prompts_and_scales_with_pairs():
    from persona_ray.inference.prompt import build_pi_prompt
    from persona_ray.pipeline.cost import PUBLISHED, pi_cost, pi_tokens

    row = {"prompt": "How do I fix a flat tyre?", "chosen": "Patch the tube.", "rejected": "Call someone.",
           "domain": "safety_qa"}
    words = lambda text: len(text.split())  # noqa: E731 — any counter; the plan uses a tokenizer
    tokens = pi_tokens([row], k=2, count=words)
    both = sum(words(build_pi_prompt(row["prompt"], row["chosen"], row["rejected"], side, "safety_qa", 2))
               for side in ("chosen", "rejected"))
    assert tokens["input"] == both and tokens["output"] > 2 * 8 and tokens["how"] == "tokenizer"
    assert pi_tokens([row], k=4, count=words)["input"] > both  # more exemplars, more tokens
    one, ten = (pi_cost(n, tokens, 2.0, 1e15, 0.5) for n in (1_000_000, 10_000_000))
    assert [r["model"] for r in one] == [m["model"] for m in PUBLISHED]
    for small, big, published in zip(one, ten, PUBLISHED):
        assert big["gpu_hours"] == pytest.approx(10 * small["gpu_hours"], rel=0.01)
        assert small["cost"] == pytest.approx(2.0 * small["gpu_hours"], abs=1)
        prefill = published["gpus"] * 1e15 * 0.5 / (2 * published["parameters_b"] * 1e9)
        seconds = 1e6 * (tokens["input"] / prefill + tokens["output"] / published["output_tokens_per_s"])
        assert small["gpu_hours"] == pytest.approx(seconds * published["gpus"] / 3600, abs=0.1)
    assert one[0]["gpu_hours"] < one[1]["gpu_hours"] < one[2]["gpu_hours"]


def test_plan_pairs_prints_the_pi_cost_table(tmp_path):
    run = CliRunner().invoke(app, ["pipeline", "--config", str(PRESETS["hhh"]), "--plan", "--plan-pairs", "1000000"])
    assert run.exit_code == 0, run.output
    assert "PI cost for 1,000,000 pairs" in run.output and "2000000" in run.output  # infer: two requests a pair
    assert all(m in run.output for m in ("Llama-3.1-8B ", "Llama-3.1-70B ", "Llama-3.1-405B-FP8"))
    assert "LambdaLabsML/vllm-benchmark" in run.output
    alone = CliRunner().invoke(app, ["pipeline", "--config", str(PRESETS["hhh"]), "--plan-pairs", "5"])
    assert alone.exit_code == 2 and "--plan-pairs goes with --plan" in alone.output


def test_comparisons_must_name_generated_models():
    base = load_config(PipelineConfig, str(REPO / "cluster" / "jobs" / "demo.yaml"))
    with pytest.raises(ValueError, match="not among the generations"):
        PipelineConfig(**{**base.model_dump(), "comparisons": [{"test": "PT-SFT", "base": "DPO"}]})


def test_plan_prices_the_pi_student_route_beside_the_teacher_on_all_pairs():
    from persona_ray.pipeline.cost import student_route

    cfg = load_config(PipelineConfig, str(PRESETS["hhh"]), {"plan.student_fraction": 0.1})
    cost = build_plan(cfg)["pi_cost"]
    student = cost["student"]
    assert student["fraction"] == 0.1 and student["pairs_per_s"] > 0 and student["train_examples_per_s"] > 0
    rows = {(r["pairs"], r["teacher"]): r for r in student["rows"]}
    assert {pairs for pairs, _ in rows} == {1564, 1_000_000, 10_000_000}
    # The teacher on all pairs is the cost table's price for that many pairs (--plan-pairs).
    for size in (1_000_000, 10_000_000):
        table = build_plan(cfg, size)["pi_cost"]["models"]
        assert [rows[(size, m["model"])]["teacher_on_all"] for m in table] == [m["cost"] for m in table]
    for (pairs, teacher), row in rows.items():
        assert row["teacher_on_fraction"] == pytest.approx(0.1 * row["teacher_on_all"], rel=0.01, abs=1)
        assert row["route_total"] == pytest.approx(row["teacher_on_fraction"] + row["student_cost"], abs=1)
    big = rows[(10_000_000, "Llama-3.1-405B-FP8")]
    assert big["route_total"] < big["teacher_on_all"]
    # The student's machine-hours follow the measured rates: the rest of the pairs at pairs_per_s.
    alone = student_route(1000, 0.5, lambda n: [{"model": "T", "cost": n / 10}],
                          {"pairs_per_s": 0.5, "train_examples_per_s": 1.0, "machine_price_per_hour": 3600.0})
    assert alone[0]["student_infer_machine_hours"] == pytest.approx(500 / 0.5 / 3600, abs=0.05)
    assert alone[0]["student_cost"] == pytest.approx(500 / 0.5 + 1000 / 1.0, abs=1)
    assert alone[0]["teacher_on_fraction"] == 50 and alone[0]["teacher_on_all"] == 100
    with_dpo = student_route(1000, 0.5, lambda n: [{"model": "T", "cost": n / 10}],
                             {"pairs_per_s": 0.5, "train_examples_per_s": 1.0, "machine_price_per_hour": 3600.0,
                              "dpo_cost": 2.0})  # SFT's 1000 examples, then DPO's at twice the price each
    assert with_dpo[0]["student_cost"] == pytest.approx(500 / 0.5 + 3 * 1000 / 1.0, abs=1)
    run = CliRunner().invoke(app, ["pipeline", "--config", str(PRESETS["hhh"]), "--plan", "--plan-student-fraction",
                                   "0.1"])
    assert run.exit_code == 0, run.output
    assert "PI student route: teacher on 10% of the pairs" in run.output and "10,000,000" in run.output


def test_a_pipeline_with_a_pi_student_plans_the_teacher_on_its_share_and_the_student_on_the_rest():
    route = {"share": 0.1, "train": {"model": "smollm2", "max_steps": 50}}
    cfg = load_config(PipelineConfig, str(PRESETS["hhh"]), {"pi_student": route})
    plan = build_plan(cfg)
    stage = {s["stage"]: s for s in plan["stages"]}
    taught = round(0.1 * 1564)
    assert stage["infer"]["requests"] == 2 * taught and "405B" in stage["infer"]["model"]
    assert stage["pi-student"]["requests"] == 2 * (1564 - taught) and stage["pi-student"]["model"] == "smollm2"
    # the student reads zero-shot prompts: far fewer tokens a pair than the 5-shot teacher
    per_pair = {name: stage[name]["input_tokens"] / stage[name]["requests"] for name in ("infer", "pi-student")}
    assert per_pair["pi-student"] < 0.5 * per_pair["infer"]
    assert plan["pi_cost"]["student"]["fraction"] == 0.1  # the route's share prices the route
    assert plan["pi_cost"]["student"]["dpo_cost"] == 0
    with_dpo = build_plan(load_config(PipelineConfig, str(PRESETS["hhh"]), {"pi_student": {**route, "dpo": {}}}))
    assert with_dpo["pi_cost"]["student"]["dpo_cost"] > 1  # a DPO example holds two personas + a reference pass
    assert (with_dpo["pi_cost"]["student"]["rows"][0]["student_train_machine_hours"]
            > plan["pi_cost"]["student"]["rows"][0]["student_train_machine_hours"])
    given = load_config(PipelineConfig, str(PRESETS["hhh"]), {"pi_student": {**route, "teacher": "reference"}})
    assert {s["stage"]: s for s in build_plan(given)["stages"]}["infer"]["requests"] == 0
    assert "student" not in build_plan(given)["pi_cost"]
    for bad, message in [({"train": {"max_stepz": 3}}, "max_stepz"), ({"infer": {"engine": "tiny"}}, "infer.engine"),
                         ({"infer": {"k_shot": -1}}, "k_shot"), ({"share": 1.0}, "share"),
                         ({"dpo": {"beta": "x"}}, "beta"), ({"dpo": {"k_shot": 2}}, "come from `train`")]:
        with pytest.raises(ValueError, match=message):
            load_config(PipelineConfig, str(PRESETS["hhh"]), {"pi_student": {**route, **bad}})
