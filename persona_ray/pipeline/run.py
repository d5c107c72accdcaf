"""The whole paper as one resumable command.

    persona-ray pipeline --config cluster/jobs/demo.yaml [--from STAGE | --only STAGE] [--verbose]

Stages, each writing its own folder under `output` (the stage jobs are the same as the
subcommands of the same name):

    infer      personas for every pair (with `pi_student`: the teacher's share, or nothing when
               the teacher is given)                          infer/
    pi-student the PI student route (`pi_student`): trained on the teacher's personas, it infers
               every pair the teacher left (inference/student.py)   pi-student/
    augment    personas joined to pairs, splits               augmented/
    pi-eval    PI accuracy, persona preference, saliency      pi-eval/
    sft        PT-SFT (personas in the input), merged         runs/pt-sft, models/pt-sft
    dpo        PT-DPO from PT-SFT, merged                     runs/pt-dpo, models/pt-dpo
    baseline   SFT + DPO without personas (the DPO baseline)  runs/base-*, models/dpo
    index      ColBERT index of the training prompts          index/
    retrieve   retrieved personas for the test split          retrieved/
    generate   PT-DPO under gold / retrieved personas (chosen and rejected), DPO without one
                                                              generated/
    judge      pairwise judge PT-DPO vs DPO, win rates, ΔPQ   judged/
    report     the demo report: examples, PI, saliency, ΔPQ   report/report.md

A stage that finishes writes stages/<stage>.json (its summary); a rerun skips every stage that
has one, so a run killed anywhere resumes with the stage it was in (whose own outputs resume
too). `--from STAGE` recomputes that stage and all after it, `--only STAGE` just that one: their
outputs are removed first (e.g. after a config change).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any, Callable, Literal

from pydantic import Field, model_validator

from persona_ray.core import storage
from persona_ray.core.settings import Settings
from persona_ray.core.tracking import (TrackingSettings, end_parent_run, flat_metrics, log_job_run, start_parent_run,
                                      tracking_field)
from persona_ray.dataset.splits import SplitSettings
from persona_ray.engines.settings import EngineSettings, JudgeSettings, SamplingSettings, VLLMSettings
from persona_ray.evaluation.generate import PERSONA_SOURCES
from persona_ray.evaluation.judge import Comparison
from persona_ray.inference.input_pairs import PairSource
from persona_ray.inference.student import StudentRoute
from persona_ray.pipeline.plan import PlanSettings
from persona_ray.tailoring.templates import TRAINING_TYPES

log = logging.getLogger(__name__)
# Stages whose jobs have no `tracking` of their own; the others log themselves as child runs.
UNTRACKED_JOBS = ("augment", "index", "retrieve", "report")
STAGES = ("infer", "pi-student", "augment", "pi-eval", "sft", "dpo", "baseline", "index", "retrieve", "generate",
          "judge", "report")
# What each stage writes under `output`: removed before a stage is rerun with --from / --only, so
# it is computed again rather than resumed.
OUTPUTS = {"infer": ["infer"], "pi-student": ["pi-student"], "augment": ["augmented"], "pi-eval": ["pi-eval"],
           "sft": ["runs/pt-sft", "models/pt-sft"], "dpo": ["runs/pt-dpo", "models/pt-dpo"],
           "baseline": ["runs/base-sft", "models/base-sft", "runs/dpo", "models/dpo"], "index": ["index"],
           "retrieve": ["retrieved"], "generate": ["generated"], "judge": ["judged"], "report": ["report"]}
TAILORED, BASELINE = "PT-DPO", "DPO"
TAILORED_SOURCES = ["gold-chosen", "gold-rejected", "retr-chosen", "retr-rejected"]


class GenerationRun(Settings):
    """One model answering the test split in the generate stage (persona-ray generate)."""

    model_id: str = Field(description="label in outputs and judge comparisons, e.g. PT-DPO")
    model: Literal["pt-sft", "pt-dpo", "base-sft", "dpo", "base"] = Field(
        description="a trained model of this pipeline (models/<name>), or base (the untrained base model: few-shot)")
    mode: Literal["persona", "plain", "fewshot"] = Field(description="how the model sees a persona (GenerateConfig.mode)")
    sources: list[Literal[PERSONA_SOURCES]] = Field(  # type: ignore[valid-type]
        description="persona sources to answer for (GenerateConfig.persona_sources)")


DEFAULT_GENERATIONS = [
    GenerationRun(model_id=TAILORED, model="pt-dpo", mode="persona", sources=TAILORED_SOURCES),
    GenerationRun(model_id=BASELINE, model="dpo", mode="plain", sources=["none"]),
]


class PipelineConfig(Settings):
    """The whole pipeline, PI to the judged report, as one resumable run."""

    pairs: PairSource
    output: str = Field(description="a local folder; every stage writes its own folder in it")
    engine: EngineSettings = EngineSettings(model="tiny", sampling=SamplingSettings(max_tokens=128))
    judge: JudgeSettings = JudgeSettings(model="tiny", sampling=SamplingSettings(max_tokens=8, stop=["\n"]))
    tracking: TrackingSettings = tracking_field("one tracked experiment run: an MLflow parent run with a child "
                                                "run per stage, a W&B group, or a TensorBoard folder per stage "
                                                "(core/tracking.py)")
    base_model: str | None = Field(None, description="the model PT and the baseline train from (and few-shot "
                                   "runs use); none: engine.model, the PI model")
    infer: dict[str, Any] = Field(default_factory=dict, description="more InferConfig keys for PI, e.g. k_shot, "
                                  "max_attribute_chars")
    pi_student: StudentRoute | None = Field(None, description="infer most personas with a small PI student "
                                            "(inference/student.py): taught by a given teacher, or by the PI model "
                                            "on a share of the pairs; none: the PI model infers every pair")
    splits: SplitSettings = SplitSettings()
    training_type: str = Field("all", description="persona training type of PT-SFT and PT-DPO: "
                               + ", ".join(t for t in TRAINING_TYPES if t != "none"))
    sft: dict[str, Any] = Field(default_factory=dict, description="SFTJobConfig keys for both SFT runs "
                                "(PT and baseline), e.g. max_steps, learning_rate")
    dpo: dict[str, Any] = Field(default_factory=dict, description="DPOJobConfig keys for both DPO runs")
    index: dict[str, Any] = Field(default_factory=dict, description="more IndexConfig keys for the index stage, "
                                  "e.g. encode_workers (0: encode in the pipeline's own process, no actor to start: "
                                  "for a small sample)")
    generation: SamplingSettings = Field(
        SamplingSettings(max_tokens=128, stop=["\nPrompt:", "\nPersona:"]),
        description="how the trained models sample their answers")
    generation_vllm: VLLMSettings | None = Field(None, description="vLLM settings of the generate stage's engines "
                                                 "(the trained models); none: engine.vllm")
    generations: list[GenerationRun] = Field(default_factory=lambda: list(DEFAULT_GENERATIONS),
                                             description="the models that answer the test split, and how")
    fewshot_k: int = Field(3, ge=1, description="exemplars in a few-shot (PT-fs) prompt")
    comparisons: list[Comparison] = Field(
        default_factory=lambda: [Comparison(test=TAILORED, base=BASELINE, base_source="none")],
        description="judge comparisons (test vs base model_id of `generations`); the first one is the report's")
    judge_sampling: SamplingSettings = Field(
        SamplingSettings(max_tokens=160, stop=[]), description="the pairwise judge's sampling (feedback + verdict)")
    judge_template: Literal["generic", "prometheus"] = Field("generic", description="JudgeConfig.template")
    judge_persona: Literal["given", "gold"] = Field("given", description="JudgeConfig.judge_persona")
    max_feedback_chars: int = Field(200, ge=20, description="pairwise judge: longest feedback before its verdict")
    examples: int = Field(3, ge=0, description="test prompts shown in the report with their personas and answers")
    plan: PlanSettings = PlanSettings()

    @model_validator(mode="after")
    def _parts_are_valid(self):
        from persona_ray.inference.infer import InferConfig
        from persona_ray.retrieval.index import IndexConfig
        from persona_ray.tailoring import DPOJobConfig, SFTJobConfig

        if self.training_type not in TRAINING_TYPES or self.training_type == "none":
            raise ValueError("training_type: PT trains with personas: chosen, rejected or all")
        if storage.is_s3(self.output):
            raise ValueError("output: a local folder (the merged models and the report are written there)")
        ids = [run.model_id for run in self.generations]
        if len(set(ids)) != len(ids):
            raise ValueError(f"generations: model_id must be unique, got {ids}")
        for comp in self.comparisons:
            missing = {comp.test, comp.base} - set(ids)
            if missing:
                raise ValueError(f"comparisons: {sorted(missing)} not among the generations' model ids {ids}")
        try:  # checked now, not an hour into the run
            InferConfig(pairs=self.pairs, output="-", **self.infer)
            SFTJobConfig(data="-", output="-", **self.sft)
            DPOJobConfig(data="-", output="-", **self.dpo)
            IndexConfig(data="-", output="-", **self.index)
        except ValueError as exc:
            raise ValueError(f"infer / sft / dpo / index: {exc}") from None
        return self


class Pipeline:
    """Runs the stages in order; each stage is a method that returns its summary."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.out = os.path.abspath(cfg.output)
        self.parent_run_id: str | None = None  # MLflow: this run's parent run (start_tracking)

    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)

    def marker(self, stage: str) -> str:
        return self.path("stages", f"{stage}.json")

    def done(self, stage: str) -> bool:
        return os.path.exists(self.marker(stage))

    def clear(self, stage: str) -> None:
        for part in (*OUTPUTS[stage], f"stages/{stage}.json"):
            target = self.path(part)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)

    def tracking(self, name: str) -> TrackingSettings:
        """The settings a stage job gets: a child of the pipeline's run, named <run folder>/<name>."""
        return self.cfg.tracking.model_copy(update={"parent_run_id": self.parent_run_id,
                                                    "group": os.path.basename(self.out),
                                                    "run_name": f"{os.path.basename(self.out)}/{name}"})

    def start_tracking(self) -> None:
        """The pipeline's parent run; its id is kept in the run folder so a resumed run stays one."""
        record = self.path("tracking.json")
        known = storage.read_json(record).get("parent_run_id") if os.path.exists(record) else None
        self.parent_run_id = start_parent_run(self.cfg.tracking, os.path.basename(self.out), self.cfg, known)
        if self.parent_run_id:
            storage.write_json({"parent_run_id": self.parent_run_id}, record)

    def run_stage(self, stage: str) -> dict[str, Any]:
        summary = getattr(self, "stage_" + stage.replace("-", "_"))()
        if stage in UNTRACKED_JOBS:  # jobs without tracking of their own: the pipeline logs their summary
            log_job_run(self.tracking(stage), stage, {"stage": stage}, flat_metrics(summary))
        storage.write_json({"stage": stage, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "summary": summary}, self.marker(stage))
        return summary

    # --- stages ------------------------------------------------------------------------------

    def stage_infer(self) -> dict:
        from persona_ray.inference.infer import InferConfig, run_infer

        route = self.cfg.pi_student
        if route and route.teacher:
            return {"skipped": f"the PI student's teacher is given ({route.teacher})"}
        share = {"share": route.share} if route else {}
        manifest = run_infer(InferConfig(pairs=self.cfg.pairs, output=self.path("infer"), engine=self.cfg.engine,
                                         tracking=self.tracking("infer"), **share, **self.cfg.infer))
        c = manifest["counts"]
        return {"pairs": c["valid_pairs"], "quarantined": c["quarantined"], "personas": c["persona_records"],
                "valid_pct": manifest["throughput"]["valid_pct"]}

    def stage_pi_student(self) -> dict:
        from persona_ray.inference.student import run_student_route

        route = self.cfg.pi_student
        if route is None:
            return {"skipped": "no pi_student: the PI model inferred every pair"}
        return run_student_route(route, self.cfg.pairs, self.path("pi-student"), self.cfg.engine,
                                 teacher=route.teacher or self.path("infer"), student_model=self.base_model,
                                 tracking=self.tracking("pi-student"))

    def persona_folders(self) -> list[str]:
        """The personas augment joins: the PI run's; or the student's, with its teacher's where the
        teacher labelled some of these pairs."""
        if self.cfg.pi_student is None:
            return [self.path("infer")]
        if not self.done("pi-student"):
            raise RuntimeError("augment: the pi-student stage has not finished; run it first (--from pi-student)")
        route = storage.read_json(self.marker("pi-student"))["summary"]
        return [path for path in (route["teacher_personas"], route["student_personas"]) if path]

    def stage_augment(self) -> dict:
        from persona_ray.dataset.augment import AugmentConfig, run_augment

        manifest = run_augment(AugmentConfig(pairs=self.cfg.pairs, personas=self.persona_folders(),
                                             output=self.path("augmented"), splits=self.cfg.splits,
                                             formats=["parquet", "jsonl"]))
        return manifest["counts"]

    def stage_pi_eval(self) -> dict:
        from persona_ray.quality.pi_eval import PIEvalConfig, run_pi_eval

        result = run_pi_eval(PIEvalConfig(data={"PI": self.path("augmented")}, output=self.path("pi-eval"),
                                          judge=self.cfg.judge, saliency_min_count=2,
                                          tracking=self.tracking("pi-eval")))
        overall = {r["side"]: round(r["accuracy"], 3) for r in result["accuracy"] if r["domain"] == "all"}
        return {"accuracy": overall, "verdicts": result["summary"]["requests"]}

    def _train(self, name: str, training_type: str, start_model: str, sft: bool) -> str:
        """One training run (SFT from `start_model`, or DPO from it), merged into models/<name>."""
        from persona_ray.tailoring import DPOJobConfig, SFTJobConfig, merge_adapter, train_dpo, train_sft

        common = {"data": self.path("augmented"), "output": self.path("runs"), "name": name,
                  "training_type": training_type, "tracking": self.tracking(name)}
        if sft:
            summary = train_sft(SFTJobConfig(**{**common, "model": start_model, **self.cfg.sft}))
        else:
            summary = train_dpo(DPOJobConfig(**{**common, "sft_model": start_model, **self.cfg.dpo}))
        merged = self.path("models", name)
        shutil.rmtree(merged, ignore_errors=True)  # a half-merged folder from a killed run
        merge_adapter(summary["checkpoint"], start_model, merged)
        return merged

    @property
    def base_model(self) -> str:
        return self.cfg.base_model or self.cfg.engine.model

    def stage_sft(self) -> dict:
        return {"model": self._train("pt-sft", self.cfg.training_type, self.base_model, sft=True)}

    def stage_dpo(self) -> dict:
        return {"model": self._train("pt-dpo", self.cfg.training_type, self.path("models", "pt-sft"), sft=False)}

    def stage_baseline(self) -> dict:
        sft = self._train("base-sft", "none", self.base_model, sft=True)
        return {"model": self._train("dpo", "none", sft, sft=False)}

    def stage_index(self) -> dict:
        from persona_ray.retrieval.index import IndexConfig, run_index

        manifest = run_index(IndexConfig(data=self.path("augmented"), output=self.path("index"), **self.cfg.index))
        return {"rows": manifest["rows"], "rebuilt": manifest["rebuilt"]}

    def stage_retrieve(self) -> dict:
        from persona_ray.retrieval.batch import RetrieveConfig, run_retrieve

        return run_retrieve(RetrieveConfig(index=self.path("index"), data=self.path("augmented"),
                                           output=self.path("retrieved")))

    def stage_generate(self) -> dict:
        from persona_ray.evaluation.generate import GenerateConfig, run_generate

        summary = {}
        for run in self.cfg.generations:
            model = self.base_model if run.model == "base" else self.path("models", run.model)
            engine = self.cfg.engine.model_copy(update={"model": model, "backend": "vllm",
                                                        "prompt_format": "completion", "sampling": self.cfg.generation,
                                                        "vllm": self.cfg.generation_vllm or self.cfg.engine.vllm})
            summary[run.model_id] = run_generate(GenerateConfig(
                data=self.path("retrieved"), output=self.path("generated"), engine=engine, model_id=run.model_id,
                mode=run.mode, persona_sources=run.sources, fewshot_data=self.path("augmented"),
                fewshot_k=self.cfg.fewshot_k, tracking=self.tracking("generate")))["generated"]
        return {"generated": summary}

    def stage_judge(self) -> dict:
        from persona_ray.evaluation.judge import JudgeConfig, run_judge

        judge = self.cfg.judge.model_copy(update={"sampling": self.cfg.judge_sampling})
        result = run_judge(JudgeConfig(responses=self.path("generated"), data=self.path("retrieved"),
                                       output=self.path("judged"), judge=judge,
                                       max_feedback_chars=self.cfg.max_feedback_chars,
                                       template=self.cfg.judge_template, judge_persona=self.cfg.judge_persona,
                                       comparisons=self.cfg.comparisons, tracking=self.tracking("judge")))
        return {"delta_pq": {f"{r['comparison']} / {r['persona_source']}": r["delta_pq"] for r in result["results"]},
                "unparseable": result["summary"]["unparseable_after_retries"]}

    def stage_report(self) -> dict:
        from persona_ray.pipeline.showcase import write_showcase

        return {"report": write_showcase(self)}


def plan(stages_done: Callable[[str], bool], start: str | None = None, only: str | None = None) -> list[str]:
    """The stages to run: `only`; or from `start` on; or every stage not done yet."""
    for name, value in (("--from", start), ("--only", only)):
        if value is not None and value not in STAGES:
            raise ValueError(f"{name}: unknown stage {value!r} (stages: {', '.join(STAGES)})")
    if only:
        return [only]
    if start:
        return list(STAGES[STAGES.index(start):])
    return [stage for stage in STAGES if not stages_done(stage)]


def run_pipeline(cfg: PipelineConfig, start: str | None = None, only: str | None = None,
                 verbose: bool = False) -> dict[str, Any]:
    """Run (or resume) the pipeline; progress on the terminal, everything else in <output>/pipeline.log."""
    from persona_ray.core.progress import PROGRESS_ENV
    from persona_ray.core.terminal import Terminal

    pipeline = Pipeline(cfg)
    todo = plan(pipeline.done, start, only)
    for stage in todo if (start or only) else []:
        pipeline.clear(stage)
    os.makedirs(pipeline.out, exist_ok=True)
    pipeline.start_tracking()
    log_path, progress_path = pipeline.path("pipeline.log"), pipeline.path(".progress.json")
    os.environ[PROGRESS_ENV] = progress_path  # before Ray starts, so local workers report too
    summaries: dict[str, Any] = {}
    started = time.time()
    with Terminal(log_path, progress_path, verbose=verbose) as terminal:
        terminal.say(f"persona-ray pipeline -> {pipeline.out}  (log: {log_path})")
        for number, stage in enumerate(STAGES, start=1):
            if stage not in todo:
                terminal.say(f"[{number:>2}/{len(STAGES)}] {stage:<10} done before, skipped")
                continue
            terminal.start(number, len(STAGES), stage)
            log.info("stage %s: start", stage, extra={"stage": stage})
            try:
                summaries[stage] = pipeline.run_stage(stage)
            except Exception as exc:
                log.exception("stage %s failed", stage)
                terminal.finish(f"FAILED: {type(exc).__name__}: {str(exc)[:300]}")
                terminal.say(f"see {log_path}; rerun the same command to resume from this stage")
                _shutdown_ray()
                raise PipelineFailed(stage, exc) from exc
            terminal.finish(f"done  {json.dumps(summaries[stage], default=str)[:150]}")
        _shutdown_ray()
        total = time.time() - started
        end_parent_run(cfg.tracking, pipeline.parent_run_id, {"seconds": total, "stages_run": len(todo)})
        terminal.say(f"finished in {total / 60:.1f} min; report: {pipeline.path('report', 'report.md')}")
    return {"output": pipeline.out, "ran": todo, "seconds": round(total, 1), "stages": summaries}


class PipelineFailed(RuntimeError):
    def __init__(self, stage: str, cause: Exception):
        super().__init__(f"stage {stage} failed: {type(cause).__name__}: {cause}")
        self.stage = stage


def _shutdown_ray() -> None:
    """Stop the local Ray this process started while output still goes to the log: engine actors
    print their own shutdown noise."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
