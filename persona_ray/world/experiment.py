"""The persona-world experiment as one resumable run: build, infer, train, measure, generate, judge, report.

    persona-ray world run --config cluster/jobs/world.yaml [--only STAGE]

Stages (each writes its folder under `output` and stages/<stage>.json when done; a rerun skips
finished stages):

    build     responses in every style (synthetic, or written by a model and confirmed by the
              style program), users, conflicting pairs, splits by prompt       data/gold/
    infer     PI personas for every pair (when "inferred" is a persona source):
              the same rows with inferred personas, PI accuracy vs the truth   infer/, data/inferred/
    train     per persona source: PT-SFT (`training_type`) then PT-DPO from it; once: SFT then DPO
              without personas (the plain baseline); each merged               runs/, models/
    measure   preference accuracy on the test pairs, per persona type          measure.json
    generate  answers to every test row by each model                         generated/
    judge     the pairwise LLM judge, PT-DPO vs DPO, and its agreement with
              the style program                                                judged/
    report    compliance per type and model, CIs, plot                        report/

Models (label: trained on, asked with):
    PT-SFT[-inferred]   SFT with personas (`training_type`); the user's persona on the Persona line
    PT-DPO[-inferred]   DPO with personas from PT-SFT; the user's persona on the Persona line
    DPO                 SFT + DPO type none; no persona
    DPO+persona         the same DPO model, the persona appended to the prompt in words (§5 of the paper)
With `sft: null` the DPO runs start from the base model (no PT-SFT), as in the CI-scale test.
Test rows carry one user of every type per test prompt, so each type is measured on the same prompts.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from persona_ray.core import storage
from persona_ray.core.settings import Settings
from persona_ray.engines.settings import EngineSettings, JudgeSettings, SamplingSettings
from persona_ray.inference.student import StudentRoute
from persona_ray.world.spec import DEFAULT_TYPES, PersonaType, check_types
from persona_ray.world.write import WritingSettings

log = logging.getLogger(__name__)
STAGES = ("build", "infer", "train", "measure", "generate", "judge", "report")
TAILORED, BASELINE, IN_WORDS = "PT-DPO", "DPO", "DPO+persona"
BUNDLED_RESPONSES = "world_responses_smollm2.json"  # written by `persona-ray world build --writer model`


class WorldConfig(Settings):
    """The persona world and the experiment on it."""

    output: str = Field(description="a local folder; every stage writes its own folder in it")
    model: str = Field("tiny", description="base model of every trained model ('tiny', 'smollm2' or a folder)")
    seed: int = Field(0, description="seed of users, splits and bootstrap (training has its own seeds)")
    types: list[PersonaType] = Field(default_factory=lambda: list(DEFAULT_TYPES),
                                     description="persona types: style, gold persona, share (first = majority)")
    prompts: str | None = Field(None, description="questions: a text file (one a line) or .jsonl with a 'prompt' "
                                "field; default: the bundled ones")
    max_prompts: int | None = Field(None, gt=0, description="use only the first N prompts")
    writer: Literal["synthetic", "model", "file"] = Field(
        "synthetic", description="who writes the responses: synthetic sentences (CI scale), a model (`writing`), "
        "or `responses_file` (a build's data/responses.json, e.g. the bundled SmolLM2 one)")
    responses_file: str | None = Field(None, description="for writer file: JSON {prompt: {style: response}}; "
                                       "'bundled' = the SmolLM2-written responses shipped with the package")
    writing: WritingSettings = WritingSettings()
    users_per_prompt: int = Field(4, ge=1, description="users (pairs) per training prompt")
    splits: dict[str, float] = Field({"train": 0.7, "val": 0.1, "test": 0.2},
                                     description="shares of prompts for train / val / test")
    persona_sources: list[Literal["gold", "inferred"]] = Field(["gold"], description="gold: the world's persona "
                                                               "sentences; inferred: personas from the PI stage")
    infer: dict[str, Any] = Field(default_factory=dict, description="InferConfig keys for PI (engine, k_shot, ...)")
    pi_student: StudentRoute | None = Field(None, description="infer the personas with a PI student instead "
                                            "(inference/student.py): the world's gold personas on `share` of the "
                                            "distinct training pairs teach it, and it infers every other pair "
                                            "(its engine: `infer.engine`); none: `infer` on every pair")
    training_type: Literal["chosen", "rejected", "all"] = Field(
        "chosen", description="persona training type of PT-SFT and PT-DPO (the paper: chosen)")
    sft: dict[str, Any] | None = Field(default_factory=dict, description="SFTJobConfig keys for every SFT run; "
                                       "null: no SFT, DPO starts from the base model")
    dpo: dict[str, Any] = Field(default_factory=dict, description="DPOJobConfig keys for every DPO run")
    generation: EngineSettings | None = Field(
        None, description="engine settings for the trained models' answers; null: skip generate and judge")
    judge: JudgeSettings | None = Field(None, description="pairwise judge of PT-DPO vs DPO; null: skip")
    judge_sampling: SamplingSettings = Field(SamplingSettings(max_tokens=160, stop=[]),
                                             description="the judge's sampling (feedback + verdict)")
    n_boot: int = Field(1000, ge=10, description="bootstrap replicates over test prompts")

    @model_validator(mode="after")
    def _valid(self):
        check_types(self.types)
        if set(self.splits) != {"train", "val", "test"} or abs(sum(self.splits.values()) - 1) > 1e-6:
            raise ValueError("splits: train, val and test shares summing to 1")
        if storage.is_s3(self.output):
            raise ValueError("output: a local folder")
        if (self.writer == "file") != (self.responses_file is not None):
            raise ValueError("responses_file: give it with writer file, and only then")
        if self.pi_student and self.pi_student.teacher:
            raise ValueError("pi_student.teacher: the world's teacher is its gold personas; leave it unset")
        return self


class World:
    """Runs the stages in order; each stage method returns its summary."""

    def __init__(self, cfg: WorldConfig):
        self.cfg = cfg
        self.out = Path(cfg.output).resolve()  # Ray workers run in other folders

    # -- paths ---------------------------------------------------------------------------------
    def data(self, source: str) -> str:
        return str(self.out / "data" / source)

    def model_path(self, name: str) -> str:
        return str(self.out / "models" / name)

    def summary(self, stage: str) -> dict | None:
        path = self.out / "stages" / f"{stage}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def test_rows(self, source: str = "gold") -> list[dict]:
        return sorted(self.read_rows("test", source), key=lambda r: r["pair_id"])

    def models(self) -> dict[str, dict]:
        """label -> {"path", "reference", "mode", "source"} for every model the run trains."""
        with_sft = self.cfg.sft is not None
        base = self.cfg.model
        found = {}
        for source in self.cfg.persona_sources:
            tag = "" if source == "gold" else "-inferred"
            if with_sft:
                found[f"PT-SFT{tag}"] = {"path": self.model_path(f"pt-sft-{source}"), "reference": base,
                                         "mode": "persona", "source": source}
            found[f"{TAILORED}{tag}"] = {"path": self.model_path(f"pt-dpo-{source}"),
                                         "reference": self.model_path(f"pt-sft-{source}") if with_sft else base,
                                         "mode": "persona", "source": source}
        reference = self.model_path("base-sft") if with_sft else base
        found[BASELINE] = {"path": self.model_path("dpo"), "reference": reference, "mode": "none", "source": "gold"}
        found[IN_WORDS] = {"path": self.model_path("dpo"), "reference": reference, "mode": "plain", "source": "gold"}
        return found

    # -- stages --------------------------------------------------------------------------------
    def build(self) -> dict:
        from persona_ray.world.build import build_world, confirmed_responses, world_prompts, write_world
        from persona_ray.world.synthetic import synthetic_response

        cfg = self.cfg
        written = None
        if cfg.writer == "file":
            responses, written = read_responses(cfg.responses_file)
            responses = {p: responses[p] for p in list(responses)[:cfg.max_prompts]}
            prompts = list(responses)
        else:
            prompts = read_prompts(cfg.prompts) if cfg.prompts else world_prompts()
            prompts = prompts[:cfg.max_prompts]
        if cfg.writer == "model":
            from persona_ray.world.write import write_responses

            responses, written = write_responses(prompts, cfg.types, cfg.writing)
        elif cfg.writer == "synthetic":
            responses = confirmed_responses(prompts, cfg.types, synthetic_response)
        splits, counts = build_world(responses, cfg.types, cfg.users_per_prompt, cfg.splits, cfg.seed)
        write_world(splits, self.data("gold"))
        # Reusable as a `responses_file` (the bundled one was written so), counts and writer included.
        storage.write_json({"writer": cfg.writing.engine.model if cfg.writer == "model" else cfg.writer,
                            "written": written, "responses": responses}, str(self.out / "data" / "responses.json"))
        return {**counts, "written": written}

    def infer(self) -> dict:
        """PI over every distinct pair, then the gold rows with the inferred personas in their place."""
        if "inferred" not in self.cfg.persona_sources:
            return {"skipped": "no inferred persona source"}
        import pyarrow as pa

        from persona_ray.core.shards import read_shards
        from persona_ray.inference.infer import InferConfig, run_infer
        from persona_ray.inference.input_pairs import PairSource
        from persona_ray.world.build import write_world
        from persona_ray.world.measure import pi_accuracy

        rows = {split: self.read_rows(split) for split in self.cfg.splits}
        pairs_file = self.out / "infer" / "pairs.jsonl"
        distinct = write_pi_pairs([row for split_rows in rows.values() for row in split_rows], pairs_file)
        pairs = PairSource(input=str(pairs_file))
        student = {}
        if self.cfg.pi_student:
            student = self.infer_with_student(rows["train"], pairs)
            folders = [Path(student["teacher_personas"]), Path(student["student_personas"])]
            valid_pct = student["valid_pct"]
        else:
            manifest = run_infer(InferConfig(pairs=pairs, output=str(self.out / "infer"), **self.cfg.infer))
            folders, valid_pct = [self.out / "infer"], manifest["throughput"]["valid_pct"]
        records = [r for folder in folders for r in (read_shards(str(folder / "personas")) or pa.table({})).to_pylist()]
        inferred, lost = {}, 0
        for split, split_rows in rows.items():
            inferred[split], missing = with_inferred_personas(split_rows, records)
            lost += missing
        write_world(inferred, self.data("inferred"))
        accuracy = pi_accuracy([r for split_rows in inferred.values() for r in split_rows], self.cfg.types)
        return {"distinct_pairs": distinct, "rows_without_valid_personas": lost, "pi_student": student,
                "pi_valid_pct": valid_pct, "pi_accuracy_vs_truth": accuracy,
                # validation and test pairs are never taught: what the PI model (or the student) does alone
                "pi_accuracy_val": pi_accuracy(inferred["val"], self.cfg.types),
                "pi_accuracy_test": pi_accuracy(inferred["test"], self.cfg.types),
                "examples": [{"type": r["chosen_type"], "inferred": r["chosen_persona"]}
                             for r in inferred["test"][:len(self.cfg.types)]]}

    def infer_with_student(self, train_rows: list[dict], pairs) -> dict:
        """The gold personas of `share` of the distinct training pairs as the teacher's records
        (write_teacher), then the student route on every pair (it skips the taught ones)."""
        from persona_ray.inference.student import run_student_route

        teacher = self.out / "infer" / "teacher"
        write_teacher(train_rows, self.cfg.pi_student.share, str(teacher / "personas"))
        engine = EngineSettings(**self.cfg.infer.get("engine", {}))
        return run_student_route(self.cfg.pi_student, pairs, str(self.out / "infer" / "student"), engine,
                                 teacher=str(teacher), student_model=self.cfg.model)

    def read_rows(self, split: str, source: str = "gold") -> list[dict]:
        from persona_ray.dataset.splits import read_split

        name = {"train": "dpo_train", "val": "dpo_val"}.get(split, split)
        return read_split(self.data(source), name)

    def train(self) -> dict:
        from persona_ray.tailoring import DPOJobConfig, SFTJobConfig, merge_adapter, train_dpo, train_sft
        from persona_ray.core.models import resolve_model

        cfg, base = self.cfg, resolve_model(self.cfg.model)
        runs = str(self.out / "runs")
        chains = [(f"pt-sft-{s}", f"pt-dpo-{s}", cfg.training_type, self.data(s)) for s in cfg.persona_sources]
        chains.append(("base-sft", "dpo", "none", self.data("gold")))
        steps = {}
        for sft_name, dpo_name, training_type, data in chains:
            start = base
            if cfg.sft is not None:
                if not Path(self.model_path(sft_name), "config.json").exists():
                    run = train_sft(SFTJobConfig(**{"data": data, "output": runs, "name": sft_name, "model": base,
                                                    "training_type": training_type, **cfg.sft}))
                    merge_adapter(run["checkpoint"], base, self.model_path(sft_name))
                    steps[sft_name] = run["steps"]
                start = self.model_path(sft_name)
            if not Path(self.model_path(dpo_name), "config.json").exists():
                run = train_dpo(DPOJobConfig(**{"data": data, "output": runs, "name": dpo_name, "sft_model": start,
                                                "training_type": training_type, **cfg.dpo}))
                merge_adapter(run["checkpoint"], start, self.model_path(dpo_name))
                steps[dpo_name] = run["steps"]
        return {"steps": steps}

    def measure(self) -> dict:
        from persona_ray.core.models import resolve_model
        from persona_ray.world.measure import pair_logprobs, ranked_first, rate_by_type

        majority = self.cfg.types[0].name
        scored: dict[tuple[str, str, str], dict] = {}  # (model, mode, source): a PT-SFT is PT-DPO's reference

        def logprobs(path: str, mode: str, source: str) -> dict:
            path = resolve_model(path) if path == self.cfg.model else path
            if (path, mode, source) not in scored:
                scored[(path, mode, source)] = pair_logprobs(path, self.test_rows(source), mode)
            return scored[(path, mode, source)]

        results = {}
        for label, model in self.models().items():
            mode, source = model["mode"], model["source"]
            ranked = ranked_first(logprobs(model["path"], mode, source), logprobs(model["reference"], mode, source))
            results[label] = rate_by_type(self.test_rows(source), ranked, majority)
        storage.write_json(results, str(self.out / "measure.json"))
        return {"preference_accuracy": {label: {k: round(v["rate"], 3) for k, v in r.items()}
                                        for label, r in results.items()}}

    def generate(self) -> dict:
        if self.cfg.generation is None:
            return {"skipped": "no generation settings"}
        from persona_ray.evaluation.generate import GenerateConfig, run_generate

        counts = {}
        for label, model in self.models().items():
            engine = self.cfg.generation.model_copy(update={"model": model["path"]})
            source = "none" if model["mode"] == "none" else "gold-chosen"  # the row's own (user's) persona
            summary = run_generate(GenerateConfig(
                data=self.data(model["source"]), output=str(self.out / "generated"), model_id=label, engine=engine,
                mode="persona" if model["mode"] == "persona" else "plain", persona_sources=[source]))
            counts[label] = summary
        return {"generated": counts}

    def answers(self, label: str) -> dict[str, str]:
        from persona_ray.core.shards import read_shards

        table = read_shards(str(self.out / "generated" / label / "responses"))
        return {} if table is None else {r["row_id"]: r["response"] for r in table.to_pylist() if not r["error"]}

    def judge(self) -> dict:
        if self.cfg.judge is None or self.cfg.generation is None:
            return {"skipped": "no judge or no generation"}
        from persona_ray.evaluation.judge import Comparison, JudgeConfig, run_judge, score
        from persona_ray.world.measure import compliance, judge_agreement

        base_source = "none"
        run = run_judge(JudgeConfig(
            responses=str(self.out / "generated"), data=self.data("gold"), output=str(self.out / "judged"),
            comparisons=[Comparison(test=TAILORED, base=BASELINE, persona_sources=["gold-chosen"],
                                    base_source=base_source)],
            judge=self.cfg.judge.model_copy(update={"sampling": self.cfg.judge_sampling}), n_boot=self.cfg.n_boot,
            seed=self.cfg.seed))
        verdicts = storage.read_parquet(str(self.out / "judged" / "verdicts.parquet")).to_pylist()
        outcomes = {r["row_id"]: r["outcome"] for r in score(verdicts) if r["rubric"] == "personalization"}
        rows = self.test_rows()
        agreement = judge_agreement(outcomes, compliance(rows, self.answers(TAILORED), self.cfg.types),
                                    compliance(rows, self.answers(BASELINE), self.cfg.types))
        return {"pairwise": run["results"], "judge_vs_style_program": agreement}

    def report(self) -> dict:
        from persona_ray.world.report import write_world_report

        return write_world_report(self)

    def run(self, only: str | None = None) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        storage.write_json(json.loads(self.cfg.model_dump_json()), str(self.out / "config.json"))
        stages = [only] if only else list(STAGES)
        done = {}
        for stage in stages:
            if only is None and self.summary(stage) is not None:
                done[stage] = self.summary(stage)
                continue
            started = time.time()
            log.info("world: stage %s", stage, extra={"stage": stage})
            result = getattr(self, stage)()
            result["seconds"] = round(time.time() - started, 1)
            storage.write_json(result, str(self.out / "stages" / f"{stage}.json"))
            done[stage] = result
        return done


def read_prompts(path: str) -> list[str]:
    """Questions from a text file (one a line) or a .jsonl file (its 'prompt' field), in order, once each."""
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".jsonl"):
        found = [json.loads(line).get("prompt") for line in text.splitlines() if line.strip()]
    else:
        found = text.splitlines()
    prompts = [" ".join(p.split()) for p in found if isinstance(p, str) and p.strip()]
    return list(dict.fromkeys(prompts))


def read_responses(path: str) -> tuple[dict[str, dict[str, str]], dict | None]:
    """({prompt: {style: response}}, the writer's kept counts) from a build's data/responses.json,
    or from the bundled SmolLM2-written one (path 'bundled')."""
    from importlib import resources

    if path == "bundled":
        text = resources.files("persona_ray.data").joinpath(BUNDLED_RESPONSES).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    found = json.loads(text)
    if not isinstance(found, dict) or not isinstance(found.get("responses"), dict):
        raise ValueError(f"responses_file {path}: expected {{'responses': {{prompt: {{style: text}}}}}}")
    return found["responses"], found.get("written")


def _pair_text_key(row: dict) -> str:
    """The id of a pair's text: its prompt's index and the two types (rows differ only by user)."""
    return f"{row['pair_id'].rsplit('-', 1)[0]}-{row['chosen_type']}-{row['rejected_type']}"


def distinct_pairs(rows: list[dict]) -> list[dict]:
    """One row per pair text (the first seen), sorted by its key: pairs of one prompt and the same two
    styles are the same text, whatever the user."""
    found: dict[str, dict] = {}
    for row in rows:
        found.setdefault(_pair_text_key(row), row)
    return [found[key] for key in sorted(found)]


def write_pi_pairs(rows: list[dict], path: Path) -> int:
    """PI's input: one pair a line for each distinct pair text of `rows`, its key as pair_id (each text
    is inferred once). Returns how many."""
    pairs = distinct_pairs(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in pairs:
            f.write(json.dumps({"pair_id": _pair_text_key(row), "prompt": row["prompt"], "chosen": row["chosen"],
                                "rejected": row["rejected"], "domain": "world"}) + "\n")
    return len(pairs)


def write_teacher(train_rows: list[dict], share: float, folder: str) -> int:
    """The gold personas of `share` of the distinct pair texts of `train_rows` (picked by a hash of
    the text's key: input_pairs.in_share) as persona records in `folder`, once. Returns the taught pairs."""
    import pyarrow as pa

    from persona_ray.core.schema import PERSONA_SCHEMA, given_persona_record
    from persona_ray.core.shards import ShardWriter, committed_rows
    from persona_ray.inference.input_pairs import in_share

    written = committed_rows(folder)
    if written:
        return written // 2
    taught = [r for r in distinct_pairs(train_rows) if in_share(_pair_text_key(r), share)]
    writer = ShardWriter(folder, PERSONA_SCHEMA, shard_size=max(1, 2 * len(taught)))
    writer.add(pa.Table.from_pylist([given_persona_record(_pair_text_key(r), side, r[f"{side}_persona"], "gold")
                                     for r in taught for side in ("chosen", "rejected")], schema=PERSONA_SCHEMA))
    writer.close()
    return len(taught)


def with_inferred_personas(rows: list[dict], records: list[dict]) -> tuple[list[dict], int]:
    """(the rows with their pair text's inferred personas in place of the gold ones, how many rows were
    left out): a row needs a valid persona on both sides to be trained or tested with inferred ones."""
    persona = {(r["pair_id"], r["side"]): r for r in records}
    kept = []
    for row in rows:
        key = _pair_text_key(row)
        chosen, rejected = persona.get((key, "chosen")), persona.get((key, "rejected"))
        if chosen and rejected and chosen["valid"] and rejected["valid"]:
            kept.append({**row, "chosen_persona": chosen["persona"], "rejected_persona": rejected["persona"]})
    return kept, len(rows) - len(kept)


def run_world(cfg: WorldConfig, only: str | None = None) -> dict:
    if only is not None and only not in STAGES:
        raise ValueError(f"unknown stage {only!r}; stages: {', '.join(STAGES)}")
    random.seed(cfg.seed)
    return World(cfg).run(only)
