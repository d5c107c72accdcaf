"""The self-built tiny model, and typed config loading with clear errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from persona_ray.core.settings import ConfigError, load_config
from persona_ray.inference.infer import InferConfig
from persona_ray.testing.tiny_model import build_tiny_model
from tests.helpers import REPO


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_tiny_model_is_deterministic_and_loads(tmp_path):
    first = build_tiny_model(tmp_path / "a")
    second = build_tiny_model(tmp_path / "b")
    assert first.name == second.name and _digest(first) == _digest(second)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(first)
    model = AutoModelForCausalLM.from_pretrained(first)
    ids = tokenizer("The user is curious and prefers examples.", return_tensors="pt").input_ids
    assert tokenizer.decode(ids[0]) == "The user is curious and prefers examples."
    assert model.config.hidden_size // model.config.num_attention_heads >= 32  # vLLM CPU attention
    assert model(ids).logits.shape[-1] == len(tokenizer)


def test_local_config_loads_with_overrides():
    cfg = load_config(InferConfig, str(REPO / "cluster" / "jobs" / "local.yaml"),
                      {"engine.vllm.batch_size": 8, "k_shot": None})
    assert cfg.engine.model == "tiny" and cfg.engine.vllm.batch_size == 8 and cfg.k_shot == 3
    gpu = load_config(InferConfig, str(REPO / "cluster" / "jobs" / "infer-gpu.yaml"))
    assert gpu.engine.vllm.gpu and gpu.engine.backend == "vllm"


def test_cluster_configs_for_retrieval_generation_and_judging_load():
    from persona_ray.evaluation.generate import GenerateConfig
    from persona_ray.retrieval.index import IndexConfig
    from persona_ray.evaluation.judge import JudgeConfig

    index = load_config(IndexConfig, str(REPO / "cluster" / "jobs" / "index.yaml"))
    assert "test" not in index.splits and index.output.startswith("s3://")
    generate = load_config(GenerateConfig, str(REPO / "cluster" / "jobs" / "generate-gpu.yaml"))
    assert generate.engine.vllm.gpu and generate.persona_sources == ["gold-chosen", "gold-rejected", "retr-chosen",
                                                              "retr-rejected"]
    judge = load_config(JudgeConfig, str(REPO / "cluster" / "jobs" / "judge-gpu.yaml"))
    assert judge.judge.sampling.max_tokens == 512 and judge.judge.prompt_format == "chat"
    assert judge.comparisons[0].label == "PT-DPO vs DPO" and judge.comparisons[0].base_source == "none"
    from persona_ray.serving.config import ServeConfig

    serve = load_config(ServeConfig, str(REPO / "cluster" / "jobs" / "serve.yaml"))
    assert [(m.name, m.mode) for m in serve.served_models()] == [("PT-DPO", "persona"), ("DPO", "plain")]
    assert len(serve.engines()) == 2 and serve.auth == "api_key"
    local = serve.with_absolute_paths("/srv/app")
    assert local.index == "/srv/app/outputs/demo/index"
    assert [m.model for m in local.served_models()] == ["/srv/app/outputs/demo/models/pt-dpo",
                                                         "/srv/app/outputs/demo/models/dpo"]


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("pairs: {input: a}\noutput: b\nengine: {backend: tgi}\n",
         "engine.backend: Input should be 'vllm' or 'openai'"),
        ("pairs: {input: a}\noutput: b\nengine:\n  vllm:\n    batch_sise: 4\n",
         "engine.vllm.batch_sise: Extra inputs are not permitted"),
        ("output: b\n", "pairs: Field required"),
        ("pairs: {}\noutput: b\n", "pairs.input: Field required"),
        ("- a\n", "expected a mapping"),
    ],
)
def test_bad_config_names_the_field(tmp_path, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(InferConfig, str(path))


@pytest.mark.slow  # `persona-ray infer` in a process of its own
def test_cli_reports_config_errors_without_a_traceback(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("pairs: {input: a}\noutput: b\nk_shot: -1\n")
    done = subprocess.run([sys.executable, "-m", "persona_ray.cli", "infer", "--config", str(path)],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    assert "k_shot: Input should be greater than or equal to 0" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_nested_block_changes_only_the_keys_it_names(tmp_path):
    """The judge's own defaults (max_tokens 512, no stop) survive a YAML that sets only the temperature."""
    from persona_ray.evaluation.judge import JudgeConfig

    path = tmp_path / "j.yaml"
    path.write_text("responses: r\ndata: d\noutput: o\ncomparisons: [{test: a, base: b}]\n"
                    "judge: {model: m, sampling: {temperature: 0.5}}\n")
    judge = load_config(JudgeConfig, str(path)).judge
    assert (judge.model, judge.sampling.temperature, judge.sampling.max_tokens, judge.sampling.stop) == (
        "m", 0.5, 512, [])
    assert judge.max_parse_retries == 2  # a JudgeSettings default
    infer = load_config(InferConfig, None, {"pairs.input": "a", "output": "b", "engine.vllm.gpu": True})
    assert infer.engine.sampling.max_tokens == 128 and infer.engine.vllm.gpu


def test_every_config_field_is_documented_and_the_readme_reference_is_current():
    from persona_ray.cli import JOB_CONFIGS
    from persona_ray.core.settings import config_reference

    reference = config_reference(JOB_CONFIGS)
    undocumented = [line for line in reference.splitlines() if line.startswith("| `") and line.endswith("|  |")]
    assert not undocumented, undocumented
    readme = (REPO / "README.md").read_text()
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    assert readme[readme.index(start) + len(start):readme.index(end)].strip() == reference.strip(), (
        "README's configuration reference is stale: paste `persona-ray config-reference` between its markers")


def test_generate_needs_a_model():
    from persona_ray.evaluation.generate import GenerateConfig

    with pytest.raises(ValueError, match="engine.model: name the model"):
        GenerateConfig(data="d", output="o", model_id="M")


@pytest.mark.parametrize("args, message", [
    (["infer", "--input", "a", "--output", "b", "--max-tokens", "0"],
     "engine.sampling.max_tokens: Input should be greater than 0"),
    (["infer", "--input", "a", "--output", "b", "--engine", "tgi"], "Invalid value for '--engine'"),
    (["pi-eval", "--data", "no-label", "--output", "o"], "expected LABEL=PATH, got 'no-label'"),
    (["judge", "--responses", "r", "--data", "d", "--output", "o", "--compare", "PT"], "expected TEST:BASE"),
    (["generate", "--data", "d", "--output", "o", "--model", "m", "--model-id", "M", "--sources", "gold-chosen,nope"],
     "persona_sources.1: Input should be"),
    (["train", "dpo", "--data", "d", "--output", "o", "--training-type", "both"], "Invalid value for '--training-type'"),
])
def test_cli_flags_set_config_keys_and_bad_values_exit_2(args, message):
    """Flags are typed by their config field: a bad value is refused before any job starts."""
    from click.testing import CliRunner

    from persona_ray.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cli_flags_reach_the_config(monkeypatch):
    from click.testing import CliRunner

    import persona_ray.cli as cli

    seen = {}

    def load_and_stop(cls, path, overrides):
        seen.update(overrides)
        raise ConfigError("stop before the job")

    monkeypatch.setattr(cli, "load_config", load_and_stop)
    result = CliRunner().invoke(cli.app, ["pi-eval", "--data", "gold=g.jsonl", "--data", "retr=r.jsonl",
                                          "--output", "o", "--judge-model", "tiny", "--engine", "openai",
                                          "--reference", "ref.jsonl", "--no-pi-accuracy"])
    assert result.exit_code == 2 and "stop before the job" in result.output
    assert seen == {"data": {"gold": "g.jsonl", "retr": "r.jsonl"}, "output": "o", "judge.model": "tiny",
                    "judge.backend": "openai", "judge.openai.base_url": None, "limit": None,
                    "reference": "ref.jsonl", "pi_accuracy": False, "persona_preference": None}
