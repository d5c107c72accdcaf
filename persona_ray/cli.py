"""`persona-ray` command line: one subcommand per pipeline stage.

Every job command is built the same way from its config class: `--config FILE` (YAML) plus a few
flags, each setting one config key. A flag's type, choices and help text come from the config
field itself, so the command line, the YAML files and the configuration reference never disagree.

    persona-ray infer --config cluster/jobs/local.yaml --max-tokens 64
    persona-ray train sft --data outputs/augmented --output outputs/runs
"""

from __future__ import annotations

import json
import sys
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

import click

from persona_ray.core.errors import UserError
from persona_ray.core.settings import ConfigError, describe, field_info, load_config
from persona_ray.dataset.augment import AugmentConfig
from persona_ray.dataset.released import ImportReleasedConfig
from persona_ray.evaluation.generate import GenerateConfig
from persona_ray.evaluation.judge import JudgeConfig
from persona_ray.inference.infer import InferConfig
from persona_ray.pipeline.run import STAGES, PipelineConfig
from persona_ray.quality.pi_eval import PIEvalConfig
from persona_ray.retrieval.batch import RetrieveConfig
from persona_ray.retrieval.index import IndexConfig
from persona_ray.serving.config import ServeConfig
from persona_ray.tailoring import DPOJobConfig, PIStudentDPOJobConfig, PIStudentJobConfig, SFTJobConfig
from persona_ray.world.experiment import STAGES as WORLD_STAGES, WorldConfig

# Every job config, in pipeline order: `persona-ray config-reference` documents them.
JOB_CONFIGS = [PipelineConfig, InferConfig, AugmentConfig, ImportReleasedConfig, PIEvalConfig, SFTJobConfig, DPOJobConfig,
               PIStudentJobConfig, PIStudentDPOJobConfig, IndexConfig, RetrieveConfig, GenerateConfig, JudgeConfig,
               ServeConfig, WorldConfig]


def _setup_logging() -> None:
    from persona_ray.core.logs import setup_logging

    context = click.get_current_context(silent=True)
    setup_logging(command=context.command_path if context else "")


def _set_log_format(log_format: str | None) -> None:
    """The group's --log-format reaches every command (and the jobs' own logging) via the environment."""
    import os

    from persona_ray.core.logs import LOG_FORMAT_ENV

    if log_format:
        os.environ[LOG_FORMAT_ENV] = log_format


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _fail_with_log(command: str, exc: BaseException, verbose: bool) -> None:
    """A UserError: one line on stderr, exit 2; the traceback into a log file (and, verbose, on stderr)."""
    import time
    import traceback

    from persona_ray.core.errors import one_line
    from persona_ray.core.models import default_cache_dir

    text = "".join(traceback.format_exception(exc))
    log_dir = default_cache_dir() / "logs"
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{command.replace(' ', '-')}-{time.strftime('%Y%m%dT%H%M%S')}.log"
        log_path.write_text(text)
        where = f" (traceback: {log_path})"
    except OSError:
        where = ""
    if verbose:
        click.echo(text, err=True)
    _fail(one_line(exc, 600) + where)


# ---------------------------------------------------------------------------------------------
# Flags that set config keys.

@dataclass(frozen=True)
class Flag:
    """`--name` sets config key `key` (dotted). `parse` turns the text (or, with `multiple`, the
    list of texts) into the value, for keys that are not a plain number, word or switch."""

    key: str
    name: str | None = None  # default: the key's last part, dashed
    parse: Callable[[Any], Any] | None = None
    multiple: bool = False
    help: str | None = None  # default: the field's description

    @property
    def dest(self) -> str:
        return self.key.replace(".", "__")  # click needs an identifier

    def option(self, cls: type) -> click.Option:
        name = self.name or self.key.rsplit(".", 1)[-1].replace("_", "-")
        help_text = self.help or describe(cls, self.key)
        if self.parse or self.multiple:
            return click.Option([f"--{name}", self.dest], multiple=self.multiple, help=help_text)
        annotation = field_info(cls, self.key).annotation
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        if annotation is bool:
            return click.Option([f"--{name}/--no-{name}", self.dest], default=None, help=help_text)
        if typing.get_origin(annotation) is typing.Literal:
            return click.Option([f"--{name}", self.dest], type=click.Choice(typing.get_args(annotation)), help=help_text)
        kind = annotation if annotation in (int, float) else str
        return click.Option([f"--{name}", self.dest], type=kind, help=help_text)

    def value(self, raw: Any) -> Any:
        if self.multiple and not raw:
            return None  # not given: leave the config's value
        return self.parse(raw) if self.parse and raw is not None else raw


def _pairs(items: tuple[str, ...], sep: str, what: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        left, found, right = item.partition(sep)
        if not found or not left or not right:
            _fail(f"expected {what}, got {item!r}")
        out.append((left, right))
    return out


def job_command(name: str, cls: type, run: Callable[..., Any], flags: list[Flag],
                extra: tuple[click.Option, ...] = ()) -> click.Command:
    """A command that loads `cls` from --config and the flags, then prints run(cfg, **extra) as JSON."""

    def callback(config: str | None, **given: Any) -> None:
        _setup_logging()
        overrides = {flag.key: flag.value(given.pop(flag.dest)) for flag in flags}
        try:
            cfg = load_config(cls, config, overrides)
        except (ConfigError, OSError) as exc:
            _fail(str(exc))
        verbose = given.get("verbose") if "verbose" in given else given.pop("show_traceback")
        try:
            result = run(cfg, **given)
        except UserError as exc:
            _fail_with_log(name, exc, bool(verbose))
        if result is not None:
            click.echo(json.dumps(result, default=str))

    summary = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
    params = [click.Option(["--config", "-c"], help=f"YAML config ({cls.__name__}; see the README's "
                           "configuration reference)"), *[flag.option(cls) for flag in flags], *extra]
    if not any(param.name == "verbose" for param in extra):
        params.append(click.Option(["--verbose", "show_traceback"], is_flag=True,
                                   help="on an error, print the traceback too (it always goes to a log file)"))
    return click.Command(name, params=params, callback=callback, help=summary)


# ---------------------------------------------------------------------------------------------
# The pipeline's jobs, in order. Each `run` returns what the command prints.

def _infer(cfg: InferConfig) -> dict:
    from persona_ray.inference.infer import run_infer

    manifest = run_infer(cfg)
    return {"output": cfg.output, **manifest["counts"], **manifest["throughput"]}


def _augment(cfg: AugmentConfig) -> dict:
    from persona_ray.dataset.augment import run_augment

    return run_augment(cfg)["counts"]


def _pi_eval(cfg: PIEvalConfig) -> dict:
    from persona_ray.quality.pi_eval import run_pi_eval

    return run_pi_eval(cfg)["summary"]


def _train(run_name: str) -> Callable[[Any], dict]:
    def run(cfg) -> dict:
        import persona_ray.tailoring as tailoring

        try:
            return getattr(tailoring, run_name)(cfg)
        except tailoring.TrainConfigError as exc:
            _fail(str(exc))

    return run


def _index(cfg: IndexConfig) -> dict:
    from persona_ray.retrieval.index import run_index

    return run_index(cfg)


def _retrieve(cfg: RetrieveConfig) -> dict:
    from persona_ray.retrieval.batch import run_retrieve

    return run_retrieve(cfg)


def _generate(cfg: GenerateConfig) -> dict:
    from persona_ray.evaluation.generate import run_generate

    return run_generate(cfg)


def _judge(cfg: JudgeConfig) -> dict:
    from persona_ray.evaluation.judge import run_judge

    result = run_judge(cfg)
    return {"summary": result["summary"], "report": result["report"]}


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _serve(cfg: ServeConfig, host: str, port: int, verbose: bool = False) -> None:
    """Serve until Ctrl-C or SIGTERM. The terminal gets a few lines (what is served where, when it
    is ready, when it stops); everything else (Ray, Serve's access logs, vLLM) goes to a log file,
    or with --verbose stays on the terminal instead."""
    import os
    import signal
    import threading
    import time

    import ray
    from ray import serve

    from persona_ray.core.logs import LOG_FORMAT_ENV
    from persona_ray.core.models import default_cache_dir
    from persona_ray.core.ray_runtime import ensure_ray
    from persona_ray.core.terminal import Terminal
    from persona_ray.serving.app import build_app

    if cfg.auth == "none" and host not in LOOPBACK:
        raise UserError(f"auth none opens the server to anyone who reaches {host}; use it on a loopback address "
                        "only, or give API keys (api_keys_file / $PERSONA_RAY_API_KEYS)")
    cfg = cfg.with_absolute_paths(os.getcwd())  # Serve replicas run in other folders
    # Serve gives its HTTP proxy 5 s to start; a busy machine needs longer (read when Ray starts here).
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    log_dir = default_cache_dir() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"serve-{time.strftime('%Y%m%dT%H%M%S')}.log"
    logging_config = {"encoding": "JSON" if os.environ.get(LOG_FORMAT_ENV) == "json" else "TEXT"}
    names = ", ".join(m.name for m in cfg.served_models())
    with Terminal(str(log_path), verbose=verbose) as terminal:
        terminal.say(f"persona-ray serve: starting {names} (log: {log_path})")
        started = time.time()
        ensure_ray()
        serve.start(http_options={"host": host, "port": port}, logging_config=logging_config)
        serve.run(build_app(cfg.model_dump()), name="persona", route_prefix="/", logging_config=logging_config)
        terminal.say(f"serving {names} on http://{host}:{port}/v1 (GET /healthz), ready after "
                     f"{time.time() - started:.0f} s; Ctrl-C or SIGTERM stops")
        stop = threading.Event()
        # SIGTERM (kill, Kubernetes) stops as cleanly as Ctrl-C: Serve's replicas and proxy shut down.
        before = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(1.0):  # wake now and then: a bare wait() would not see Ctrl-C
                pass
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, before)
        terminal.say("stopping")
        serve.shutdown()
        # Disconnect while the output still goes to the log: Ray forwards the replicas' last log
        # lines to this process a moment later, and after the terminal is restored they would land
        # on it (seen in CI: a replica's "CALL ready OK" after "serving stopped").
        ray.shutdown()
        terminal.say(f"serving stopped after {time.time() - started:.0f} s")


def _import_released(cfg) -> dict:
    from persona_ray.dataset.released import run_import_released

    try:
        return run_import_released(cfg)
    except FileNotFoundError as exc:
        _fail(f"source: {exc}")


def _pipeline(cfg: PipelineConfig, start: str | None, only: str | None, verbose: bool, show_plan: bool,
              plan_pairs: int | None) -> None:
    from persona_ray.pipeline.run import PipelineFailed, run_pipeline

    if plan_pairs is not None and not show_plan:
        _fail("--plan-pairs goes with --plan")
    if show_plan:
        from persona_ray.pipeline.plan import build_plan, format_plan

        try:
            click.echo(format_plan(build_plan(cfg, plan_pairs)))
        except ValueError as exc:
            _fail(str(exc))
        return
    if start and only:
        _fail("give --from or --only, not both")
    try:
        run_pipeline(cfg, start=start, only=only, verbose=verbose)
    except PipelineFailed:
        sys.exit(1)  # the terminal already shows the stage, the error and the log's path


MODEL = Flag("engine.model", "model")
train = click.Group("train", help="Training with TRL + LoRA under Ray Train: persona-tailoring SFT, DPO from the "
                    "merged SFT model, or a PI student that learns a teacher's personas (pi), then tells a pair's "
                    "two sides apart (pi-dpo, from the merged pi student).")
TRAIN_FLAGS = [Flag("data"), Flag("output"), Flag("training_type"), Flag("num_workers"), Flag("max_steps")]
train.add_command(job_command("sft", SFTJobConfig, _train("train_sft"), [*TRAIN_FLAGS, Flag("model")]))
train.add_command(job_command("dpo", DPOJobConfig, _train("train_dpo"), [*TRAIN_FLAGS, Flag("sft_model")]))
train.add_command(job_command("pi", PIStudentJobConfig, _train("train_pi_student"), [*TRAIN_FLAGS, Flag("model")]))
train.add_command(job_command("pi-dpo", PIStudentDPOJobConfig, _train("train_pi_student_dpo"),
                              [*TRAIN_FLAGS, Flag("sft_model")]))

def _world(stage: str | None) -> Callable[..., dict]:
    def run(cfg: WorldConfig, only: str | None = None, **_: Any) -> dict:
        from persona_ray.world.experiment import run_world

        return run_world(cfg, only=stage or only)
    return run


world = click.Group("world", help="The persona world: users with known styles, the experiment on it, its report.")
WORLD_FLAGS = [Flag("output"), Flag("model"), Flag("writer"), Flag("responses_file"), Flag("max_prompts"), Flag("seed")]
world.add_command(job_command("build", WorldConfig, _world("build"), WORLD_FLAGS))
world.add_command(job_command("run", WorldConfig, _world(None), WORLD_FLAGS, extra=(
    click.Option(["--only"], type=click.Choice(WORLD_STAGES), help="run (again) just this stage"),)))
world.add_command(job_command("report", WorldConfig, _world("report"), WORLD_FLAGS))

JOBS = [
    job_command("pipeline", PipelineConfig, _pipeline, [Flag("pairs.input", "input"), Flag("output"), MODEL,
                                                        Flag("plan.student_fraction", "plan-student-fraction")], extra=(
        click.Option(["--from", "start"], type=click.Choice(STAGES), help="rerun this stage and all after it"),
        click.Option(["--only"], type=click.Choice(STAGES), help="rerun just this stage"),
        click.Option(["--verbose"], is_flag=True, help="show Ray, vLLM and job logs instead of writing them to "
                     "<output>/pipeline.log"),
        click.Option(["--plan", "show_plan"], is_flag=True, help="print the stages, their models, accelerators, "
                     "tokens and estimated accelerator-hours, and the PI cost table, and run nothing"),
        click.Option(["--plan-pairs"], type=click.IntRange(min=1), help="with --plan: plan for this many pairs "
                     "(sizes per pair as measured), e.g. 1000000"))),
    job_command("infer", InferConfig, _infer, [
        Flag("pairs.input", "input"), Flag("output"), MODEL, Flag("engine.backend", "engine"),
        Flag("pairs.input_format"), Flag("engine.guided_decoding", "guided"), Flag("k_shot"),
        Flag("engine.sampling.max_tokens"), Flag("engine.vllm.concurrency"), Flag("engine.openai.base_url"),
        Flag("shard_size")]),
    job_command("augment", AugmentConfig, _augment, [
        Flag("pairs.input", "pairs"), Flag("pairs.input_format"), Flag("personas"), Flag("output"),
        Flag("push_to_hub")]),
    job_command("import-released", ImportReleasedConfig, _import_released, [
        Flag("source"), Flag("subset"), Flag("output")]),
    job_command("pi-eval", PIEvalConfig, _pi_eval, [
        Flag("data", multiple=True, parse=lambda items: dict(_pairs(items, "=", "LABEL=PATH")),
             help="LABEL=PATH: the augmented data of one PI model (repeat)"),
        Flag("output"), Flag("judge.model", "judge-model"), Flag("judge.backend", "engine"),
        Flag("judge.openai.base_url"), Flag("limit"), Flag("reference"), Flag("pi_accuracy"),
        Flag("persona_preference")]),
    train,
    job_command("index", IndexConfig, _index, [Flag("data"), Flag("output"), Flag("checkpoint"), Flag("encode_workers"),
                                              Flag("force")]),
    job_command("retrieve", RetrieveConfig, _retrieve, [Flag("index"), Flag("data"), Flag("split"), Flag("output")]),
    job_command("generate", GenerateConfig, _generate, [
        Flag("data"), Flag("output"), MODEL, Flag("model_id"), Flag("mode"),
        Flag("persona_sources", "sources", parse=lambda text: text.split(","),
             help="comma-separated: " + describe(GenerateConfig, "persona_sources")),
        Flag("index"), Flag("limit")]),
    job_command("judge", JudgeConfig, _judge, [
        Flag("responses"), Flag("data"), Flag("output"), Flag("judge.model", "judge-model"),
        Flag("comparisons", "compare", multiple=True, help="TEST:BASE model ids (repeat)",
             parse=lambda items: [{"test": t, "base": b} for t, b in _pairs(items, ":", "TEST:BASE")]),
        Flag("limit")]),
    job_command("serve", ServeConfig, _serve, [Flag("index"), MODEL, Flag("auth"), Flag("api_keys_file")], extra=(
        click.Option(["--host"], default="127.0.0.1", show_default=True, help="address to listen on"),
        click.Option(["--port"], default=8000, type=int, show_default=True, help="port to listen on"),
        click.Option(["--verbose"], is_flag=True, help="Ray's, Serve's and vLLM's output on the terminal instead of "
                     "in a log file; on an error, the traceback"))),
    world,
]


# ---------------------------------------------------------------------------------------------
# Commands that are not jobs.

@click.command()
@click.option("--index", required=True, help=describe(RetrieveConfig, "index"))
@click.option("--query", required=True, help="the text to search with")
@click.option("--k", default=5, show_default=True, help="hits to print")
def search(index: str, query: str, k: int) -> None:
    """The top-k training rows (with their personas) for one query."""
    from persona_ray.retrieval.search import PersonaRetriever, QueryError

    _setup_logging()
    try:
        hits = PersonaRetriever.load(index).search(query, k=k)
    except QueryError as exc:
        _fail(str(exc))
    click.echo(json.dumps(hits, indent=2))


@click.command()
@click.option("--output", required=True, help="local folder for report.md and plots")
@click.option("--personas", help=".jsonl/.parquet with chosen_persona and rejected_persona, or an augmented folder")
@click.option("--judged", help="a `persona-ray judge` output folder")
@click.option("--min-count", default=5, show_default=True, help=describe(PIEvalConfig, "saliency_min_count"))
@click.option("--top-k", default=15, show_default=True, help=describe(PIEvalConfig, "saliency_top_k"))
@click.option("--saliency-method", type=click.Choice(["log_odds", "p_label"]), default="log_odds", show_default=True,
              help=describe(PIEvalConfig, "saliency_method"))
def report(output: str, personas: str | None, judged: str | None, min_count: int, top_k: int,
           saliency_method: str) -> None:
    """A report from persona diagnostics (--personas) and/or pairwise judgements (--judged)."""
    from persona_ray.core import storage
    from persona_ray.core.report import write_report
    from persona_ray.quality.pi_eval import load_personas_for_report
    from persona_ray.quality.saliency import top_traits, word_saliency

    if not personas and not judged:
        _fail("give --personas and/or --judged")
    sections: dict = {"notes": []}
    if personas:
        chosen, rejected = load_personas_for_report(personas)
        sections.update(saliency=word_saliency(chosen, rejected, min_count=min_count, top_k=top_k,
                                               method=saliency_method),
                        traits=top_traits(chosen + rejected))
        sections["notes"].append(f"{len(chosen)} chosen and {len(rejected)} rejected personas from {personas}.")
    if judged:
        results = storage.read_json(storage.join(judged, "pairwise.json"))
        sections["pairwise"] = results["results"]
        sections["notes"].append(f"Pairwise judgements from {judged}: {json.dumps(results['summary'])}")
    click.echo(write_report(output, title="persona-ray report", **sections))


@click.command()
@click.option("--checkpoint", required=True, help="Ray Train checkpoint or LoRA adapter folder (or s3://)")
@click.option("--base-model", required=True, help="the model the adapter was trained on ('tiny' ok)")
@click.option("--output", required=True, help="folder for the merged model (vLLM/transformers load it)")
def merge(checkpoint: str, base_model: str, output: str) -> None:
    """Merge a LoRA adapter into its base model and save model + tokenizer."""
    from persona_ray.tailoring import merge_adapter

    _setup_logging()
    click.echo(merge_adapter(checkpoint, base_model, output))


@click.command("config-reference")
def config_reference_cmd() -> None:
    """Print every job config's keys, defaults and meanings as Markdown (the README's reference)."""
    from persona_ray.core.settings import config_reference

    click.echo(config_reference(JOB_CONFIGS))


@click.command("build-tiny-model")
@click.option("--cache-dir", help="where to build it (default: $PERSONA_RAY_CACHE)")
def build_tiny_model_cmd(cache_dir: str | None) -> None:
    """Build (or find) the tiny random-weight test model and print its folder."""
    from persona_ray.testing.tiny_model import build_tiny_model

    click.echo(str(build_tiny_model(cache_dir)))


app = click.Group("persona-ray", help="Persona-aware preference tuning on Ray.", no_args_is_help=True,
                  commands=[*JOBS, search, report, merge, config_reference_cmd, build_tiny_model_cmd],
                  params=[click.Option(["--log-format"], type=click.Choice(["text", "json"]),
                                       help="log lines as text (default) or JSON lines with the job id, command, "
                                       "stage and counts, for a log collector; also $PERSONA_RAY_LOG_FORMAT")],
                  callback=_set_log_format)

if __name__ == "__main__":
    app()
