"""`persona-ray` command line: one subcommand per pipeline stage."""

from __future__ import annotations

import json
import logging
import sys
from typing import Optional

import typer

from persona_ray.core.settings import describe
from persona_ray.dataset.augment import AugmentConfig
from persona_ray.evaluation.generate import GenerateConfig
from persona_ray.evaluation.judge import JudgeConfig
from persona_ray.inference.infer import InferConfig
from persona_ray.quality.pi_eval import PIEvalConfig
from persona_ray.retrieval.index import IndexConfig
from persona_ray.retrieval.batch import RetrieveConfig
from persona_ray.serving.app import ServeConfig
from persona_ray.tailoring import DPOJobConfig, SFTJobConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Persona-aware preference tuning on Ray.")
# Every job config, in pipeline order: `persona-ray config-reference` documents them.
JOB_CONFIGS = [InferConfig, AugmentConfig, PIEvalConfig, SFTJobConfig, DPOJobConfig, IndexConfig, RetrieveConfig,
               GenerateConfig, JudgeConfig, ServeConfig]


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


@app.command()
def infer(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (see cluster/jobs/local.yaml)"),
    input: Optional[str] = typer.Option(None, "--input", help=describe(InferConfig, "pairs.input")),
    output: Optional[str] = typer.Option(None, "--output", help=describe(InferConfig, "output")),
    model: Optional[str] = typer.Option(None, "--model", help=describe(InferConfig, "engine.model")),
    engine: Optional[str] = typer.Option(None, "--engine", help=describe(InferConfig, "engine.backend")),
    input_format: Optional[str] = typer.Option(None, "--input-format", help=describe(InferConfig, "pairs.input_format")),
    guided: Optional[bool] = typer.Option(None, "--guided/--no-guided",
                                          help=describe(InferConfig, "engine.guided_decoding")),
    k_shot: Optional[int] = typer.Option(None, "--k-shot", help=describe(InferConfig, "k_shot")),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help=describe(InferConfig, "engine.sampling.max_tokens")),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help=describe(InferConfig, "engine.vllm.concurrency")),
    base_url: Optional[str] = typer.Option(None, "--base-url", help=describe(InferConfig, "engine.openai.base_url")),
    shard_size: Optional[int] = typer.Option(None, "--shard-size", help=describe(InferConfig, "shard_size")),
) -> None:
    """Persona inference: two personas (chosen, rejected) for every preference pair."""
    from persona_ray.inference.infer import run_infer

    _setup_logging()
    overrides = {
        "pairs.input": input, "output": output, "engine.model": model, "engine.backend": engine,
        "pairs.input_format": input_format, "engine.guided_decoding": guided, "k_shot": k_shot,
        "engine.sampling.max_tokens": max_tokens, "engine.vllm.concurrency": concurrency,
        "engine.openai.base_url": base_url, "shard_size": shard_size,
    }
    cfg = _load(InferConfig, config, overrides)
    manifest = run_infer(cfg)
    typer.echo(json.dumps({"output": cfg.output, **manifest["counts"], **manifest["throughput"]}))


def _load(cls, config, overrides):
    from persona_ray.core.settings import ConfigError, load_config

    try:
        return load_config(cls, config, overrides)
    except (ConfigError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)


@app.command()
def augment(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (AugmentConfig)"),
    pairs: Optional[str] = typer.Option(None, "--pairs", help=describe(AugmentConfig, "pairs.input")),
    input_format: Optional[str] = typer.Option(None, "--input-format", help=describe(AugmentConfig, "pairs.input_format")),
    personas: Optional[str] = typer.Option(None, "--personas", help=describe(AugmentConfig, "personas")),
    output: Optional[str] = typer.Option(None, "--output", help=describe(AugmentConfig, "output")),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", help=describe(AugmentConfig, "push_to_hub")),
) -> None:
    """Join personas to their pairs and write deterministic splits (Parquet, JSONL, HF DatasetDict)."""
    from persona_ray.dataset.augment import run_augment

    _setup_logging()
    cfg = _load(AugmentConfig, config, {"pairs.input": pairs, "pairs.input_format": input_format,
                                        "personas": personas, "output": output, "push_to_hub": push_to_hub})
    typer.echo(json.dumps(run_augment(cfg)["counts"]))


@app.command("pi-eval")
def pi_eval(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (PIEvalConfig)"),
    data: list[str] = typer.Option([], "--data", help="LABEL=PATH: augmented data of one PI model (repeat)"),
    output: Optional[str] = typer.Option(None, "--output", help=describe(PIEvalConfig, "output")),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help=describe(PIEvalConfig, "judge.model")),
    engine: Optional[str] = typer.Option(None, "--engine", help=describe(PIEvalConfig, "judge.backend")),
    base_url: Optional[str] = typer.Option(None, "--base-url", help=describe(PIEvalConfig, "judge.openai.base_url")),
    limit: Optional[int] = typer.Option(None, "--limit", help=describe(PIEvalConfig, "limit")),
) -> None:
    """PI accuracy (both orders), persona preference and word saliency, with a Markdown report."""
    from persona_ray.quality.pi_eval import run_pi_eval

    _setup_logging()
    pairs = {}
    for item in data:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            typer.echo(f"error: --data expects LABEL=PATH, got {item!r}", err=True)
            raise typer.Exit(2)
        pairs[label] = path
    cfg = _load(PIEvalConfig, config, {"data": pairs or None, "output": output, "judge.model": judge_model,
                                       "judge.backend": engine, "judge.openai.base_url": base_url, "limit": limit})
    typer.echo(json.dumps(run_pi_eval(cfg)["summary"]))


@app.command()
def index(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (IndexConfig)"),
    data: Optional[str] = typer.Option(None, "--data", help=describe(IndexConfig, "data")),
    output: Optional[str] = typer.Option(None, "--output", help=describe(IndexConfig, "output")),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help=describe(IndexConfig, "checkpoint")),
    force: Optional[bool] = typer.Option(None, "--force/--no-force", help=describe(IndexConfig, "force")),
) -> None:
    """ColBERT (PLAID) index of the training prompts and their personas, for persona retrieval."""
    from persona_ray.retrieval.index import run_index

    _setup_logging()
    cfg = _load(IndexConfig, config, {"data": data, "output": output, "checkpoint": checkpoint, "force": force})
    typer.echo(json.dumps(run_index(cfg)))


@app.command()
def retrieve(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (RetrieveConfig)"),
    index: Optional[str] = typer.Option(None, "--index", help=describe(RetrieveConfig, "index")),
    data: Optional[str] = typer.Option(None, "--data", help=describe(RetrieveConfig, "data")),
    split: Optional[str] = typer.Option(None, "--split", help=describe(RetrieveConfig, "split")),
    output: Optional[str] = typer.Option(None, "--output", help=describe(RetrieveConfig, "output")),
    query: Optional[str] = typer.Option(None, "--query", help="search one query and print its top hits"),
    k: int = typer.Option(5, "--k", help="hits to print with --query"),
) -> None:
    """Retrieved personas (top training prompt) for every row of a split, or the hits of one --query."""
    from persona_ray.retrieval.batch import run_retrieve
    from persona_ray.retrieval.search import PersonaRetriever, QueryError

    _setup_logging()
    if query is not None:
        if not index:
            typer.echo("error: --query needs --index", err=True)
            raise typer.Exit(2)
        try:
            hits = PersonaRetriever.load(index).search(query, k=k)
        except QueryError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2)
        typer.echo(json.dumps(hits, indent=2))
        return
    cfg = _load(RetrieveConfig, config, {"index": index, "data": data, "split": split, "output": output})
    typer.echo(json.dumps(run_retrieve(cfg)))


@app.command()
def generate(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (GenerateConfig)"),
    data: Optional[str] = typer.Option(None, "--data", help=describe(GenerateConfig, "data")),
    output: Optional[str] = typer.Option(None, "--output", help=describe(GenerateConfig, "output")),
    model: Optional[str] = typer.Option(None, "--model", help=describe(GenerateConfig, "engine.model")),
    model_id: Optional[str] = typer.Option(None, "--model-id", help=describe(GenerateConfig, "model_id")),
    mode: Optional[str] = typer.Option(None, "--mode", help=describe(GenerateConfig, "mode")),
    sources: Optional[str] = typer.Option(None, "--sources", help="comma-separated: "
                                          + describe(GenerateConfig, "persona_sources")),
    index: Optional[str] = typer.Option(None, "--index", help=describe(GenerateConfig, "index")),
    limit: Optional[int] = typer.Option(None, "--limit", help=describe(GenerateConfig, "limit")),
) -> None:
    """One response per test row and persona source (gold/retr chosen/rejected, system, none)."""
    from persona_ray.evaluation.generate import run_generate

    _setup_logging()
    cfg = _load(GenerateConfig, config, {
        "data": data, "output": output, "engine.model": model, "model_id": model_id, "mode": mode, "index": index,
        "persona_sources": sources.split(",") if sources else None, "limit": limit})
    typer.echo(json.dumps(run_generate(cfg)))


@app.command()
def judge(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (JudgeConfig)"),
    responses: Optional[str] = typer.Option(None, "--responses", help=describe(JudgeConfig, "responses")),
    data: Optional[str] = typer.Option(None, "--data", help=describe(JudgeConfig, "data")),
    output: Optional[str] = typer.Option(None, "--output", help=describe(JudgeConfig, "output")),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help=describe(JudgeConfig, "judge.model")),
    compare: list[str] = typer.Option([], "--compare", help="TEST:BASE model ids (repeat)"),
    limit: Optional[int] = typer.Option(None, "--limit", help=describe(JudgeConfig, "limit")),
) -> None:
    """Pairwise judge (both orders, quality and personalization): win rates and ΔPQ with CIs."""
    from persona_ray.evaluation.judge import run_judge

    _setup_logging()
    comparisons = []
    for item in compare:
        test, sep, base = item.partition(":")
        if not sep or not test or not base:
            typer.echo(f"error: --compare expects TEST:BASE, got {item!r}", err=True)
            raise typer.Exit(2)
        comparisons.append({"test": test, "base": base})
    cfg = _load(JudgeConfig, config, {"responses": responses, "data": data, "output": output,
                                      "judge.model": judge_model, "comparisons": comparisons or None, "limit": limit})
    result = run_judge(cfg)
    typer.echo(json.dumps({"summary": result["summary"], "report": result["report"]}))


@app.command("serve")
def serve_cmd(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (ServeConfig)"),
    index: Optional[str] = typer.Option(None, "--index", help=describe(ServeConfig, "index")),
    model: Optional[str] = typer.Option(None, "--model", help=describe(ServeConfig, "engine.model")),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
) -> None:
    """Serve persona-tailored answers over HTTP (Ray Serve): POST /v1/tailor, GET /healthz."""
    import time

    from ray import serve

    from persona_ray.core.ray_runtime import ensure_ray
    from persona_ray.serving.app import build_app

    _setup_logging()
    cfg = _load(ServeConfig, config, {"index": index, "engine.model": model})
    ensure_ray()
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(cfg.model_dump()), name="persona", route_prefix="/")
    typer.echo(f"serving on http://{host}:{port} (POST /v1/tailor, GET /healthz); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()


@app.command()
def report(
    output: str = typer.Option(..., "--output", help="local folder for report.md and plots"),
    personas: Optional[str] = typer.Option(None, "--personas",
                                           help=".jsonl/.parquet with chosen_persona and rejected_persona"),
    judged: Optional[str] = typer.Option(None, "--judged", help="a `persona-ray judge` output folder"),
    min_count: int = typer.Option(5, "--min-count"),
    top_k: int = typer.Option(15, "--top-k"),
) -> None:
    """A report from persona diagnostics (--personas) and/or pairwise judgements (--judged)."""
    from persona_ray.core import storage
    from persona_ray.quality.saliency import top_traits, word_saliency
    from persona_ray.quality.pi_eval import load_personas_for_report
    from persona_ray.core.report import write_report

    if not personas and not judged:
        typer.echo("error: give --personas and/or --judged", err=True)
        raise typer.Exit(2)
    sections: dict = {"notes": []}
    if personas:
        chosen, rejected = load_personas_for_report(personas)
        sections.update(saliency=word_saliency(chosen, rejected, min_count=min_count, top_k=top_k),
                        traits=top_traits(chosen + rejected))
        sections["notes"].append(f"{len(chosen)} chosen and {len(rejected)} rejected personas from {personas}.")
    if judged:
        results = storage.read_json(storage.join(judged, "pairwise.json"))
        sections["pairwise"] = results["results"]
        sections["notes"].append(f"Pairwise judgements from {judged}: {json.dumps(results['summary'])}")
    typer.echo(write_report(output, title="persona-ray report", **sections))


@app.command()
def train(
    method: str = typer.Argument(..., help="sft | dpo"),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (SFTJobConfig / DPOJobConfig)"),
    data: Optional[str] = typer.Option(None, "--data", help=describe(SFTJobConfig, "data")),
    output: Optional[str] = typer.Option(None, "--output", help=describe(SFTJobConfig, "output")),
    training_type: Optional[str] = typer.Option(None, "--training-type", help=describe(SFTJobConfig, "training_type")),
    model: Optional[str] = typer.Option(None, "--model", help="SFT: " + describe(SFTJobConfig, "model")),
    sft_model: Optional[str] = typer.Option(None, "--sft-model", help="DPO: " + describe(DPOJobConfig, "sft_model")),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help=describe(SFTJobConfig, "num_workers")),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help=describe(SFTJobConfig, "max_steps")),
) -> None:
    """Persona tailoring with TRL + LoRA under Ray Train: SFT, or DPO from the merged SFT model."""
    from persona_ray.tailoring import TrainConfigError, train_dpo, train_sft

    _setup_logging()
    jobs = {"sft": (SFTJobConfig, train_sft), "dpo": (DPOJobConfig, train_dpo)}
    if method not in jobs:
        typer.echo(f"error: method must be 'sft' or 'dpo', got {method!r}", err=True)
        raise typer.Exit(2)
    cls, run = jobs[method]
    overrides = {"data": data, "output": output, "training_type": training_type, "num_workers": num_workers,
                 "max_steps": max_steps}
    if method == "sft":
        overrides["model"] = model
    else:
        overrides["sft_model"] = sft_model
    cfg = _load(cls, config, overrides)
    try:
        summary = run(cfg)
    except TrainConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(json.dumps(summary, default=str))


@app.command()
def merge(
    checkpoint: str = typer.Option(..., "--checkpoint", help="Ray Train checkpoint or LoRA adapter folder (or s3://)"),
    base_model: str = typer.Option(..., "--base-model", help="the model the adapter was trained on ('tiny' ok)"),
    output: str = typer.Option(..., "--output", help="folder for the merged model (vLLM/transformers load it)"),
) -> None:
    """Merge a LoRA adapter into its base model and save model + tokenizer."""
    from persona_ray.tailoring import merge_adapter

    _setup_logging()
    typer.echo(merge_adapter(checkpoint, base_model, output))


@app.command("config-reference")
def config_reference_cmd() -> None:
    """Print every job config's keys, defaults and meanings as Markdown (the README's reference)."""
    from persona_ray.core.settings import config_reference

    typer.echo(config_reference(JOB_CONFIGS))


@app.command("build-tiny-model")
def build_tiny_model_cmd(cache_dir: Optional[str] = typer.Option(None, "--cache-dir")) -> None:
    """Build (or find) the tiny random-weight test model and print its folder."""
    from persona_ray.testing.tiny_model import build_tiny_model

    typer.echo(str(build_tiny_model(cache_dir)))


if __name__ == "__main__":
    app()
