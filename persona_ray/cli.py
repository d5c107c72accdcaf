"""`persona-ray` command line: one subcommand per pipeline stage."""

from __future__ import annotations

import json
import logging
import sys
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Persona-aware preference tuning on Ray.")


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


@app.command()
def infer(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (see cluster/local.yaml)"),
    input: Optional[str] = typer.Option(None, "--input", help="pairs: .jsonl/.parquet file or folder, s3://, hf://"),
    output: Optional[str] = typer.Option(None, "--output", help="output folder or s3:// prefix"),
    model: Optional[str] = typer.Option(None, "--model", help="model path or name; 'tiny' = built-in test model"),
    engine: Optional[str] = typer.Option(None, "--engine", help="vllm | openai"),
    input_format: Optional[str] = typer.Option(None, "--input-format", help="auto|flat|pku_saferlhf|hh_rlhf|shp"),
    guided: Optional[bool] = typer.Option(None, "--guided/--no-guided", help="regex-guided decoding"),
    k_shot: Optional[int] = typer.Option(None, "--k-shot"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens"),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="vLLM engine actors"),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint (engine openai)"),
    shard_size: Optional[int] = typer.Option(None, "--shard-size"),
) -> None:
    """Persona inference: two personas (chosen, rejected) for every preference pair."""
    from persona_ray.config import ConfigError, load_config
    from persona_ray.infer import InferConfig, run_infer

    _setup_logging()
    overrides = {
        "input": input, "output": output, "model": model, "engine": engine, "input_format": input_format,
        "guided_decoding": guided, "k_shot": k_shot, "sampling.max_tokens": max_tokens,
        "vllm.concurrency": concurrency, "openai.base_url": base_url, "shard_size": shard_size,
    }
    try:
        cfg = load_config(InferConfig, config, overrides)
    except (ConfigError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    manifest = run_infer(cfg)
    typer.echo(json.dumps({"output": cfg.output, **manifest["counts"], **manifest["throughput"]}))


@app.command("build-tiny-model")
def build_tiny_model_cmd(cache_dir: Optional[str] = typer.Option(None, "--cache-dir")) -> None:
    """Build (or find) the tiny random-weight test model and print its folder."""
    from persona_ray.tiny_model import build_tiny_model

    typer.echo(str(build_tiny_model(cache_dir)))


if __name__ == "__main__":
    app()
