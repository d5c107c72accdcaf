"""Tailored generation: one response per test row for each persona source, from one model.

Persona sources (the paper's evaluation settings)
    gold-chosen / gold-rejected   the row's own inferred personas (P_C / P_R)
    retr-chosen / retr-rejected   the personas of the most similar training prompt (P_retr), from
                                  `persona-ray retrieve` columns or retrieved here with `index`
    system                        one fixed persona for the whole dataset (`system_persona`, or
                                  the domain's own from evaluation/domains.py)
    none                          no persona

How the model sees the persona depends on how it was trained (`mode`)
    persona    a persona-tailored model (PT-SFT / PT-DPO): "Prompt: …\\nPersona: …\\nResponse:"
    plain      a model trained without personas (type none, the plain DPO baseline): it never saw
               the Persona tag, so the persona is appended to the prompt in plain words
               ("I am …", pt_templates.plain_words_persona)
    fewshot    a base model with k exemplars from the fewshot split (PT-fs)

Data contract
    input   an augmented folder (<split>.parquet) or a .jsonl/.parquet file with pair_id, prompt,
            chosen_persona, rejected_persona (+ retr_chosen_persona, retr_rejected_persona for
            retr-* sources unless `index` is given); domain optional
    output  <output>/<model_id>/responses/ Parquet shards, one row per (row_id, persona_source):
            row_id, persona_source, persona, model_id, prompt, input, response, finish_reason,
            error (a mnemonic answer primed with "<Term> sounds like" keeps the prime);
            <output>/<model_id>/quarantine.jsonl lists rows that could not be asked
            (row id, source, field, reason). A rerun resumes: rows already written are skipped.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from persona_ray.core import progress, storage
from persona_ray.core.schema import row_id
from persona_ray.core.settings import Settings
from persona_ray.core.tracking import TrackingSettings, flat_metrics, log_job_run, tracking_field
from persona_ray.engines.settings import EngineSettings, SamplingSettings
from persona_ray.dataset.splits import TEST_SPLIT, read_split
from persona_ray.evaluation.domains import response_prime, system_persona
from persona_ray.tailoring.fewshot import fewshot_prompt
from persona_ray.tailoring.templates import inference_input
from persona_ray.core.shards import ShardWriter, done_keys, key_of

log = logging.getLogger(__name__)
PERSONA_SOURCES = ("gold-chosen", "gold-rejected", "retr-chosen", "retr-rejected", "system", "none")
SOURCE_FIELD = {"gold-chosen": "chosen_persona", "gold-rejected": "rejected_persona",
                "retr-chosen": "retr_chosen_persona", "retr-rejected": "retr_rejected_persona"}
KEY = ("row_id", "persona_source")
RESPONSE_SCHEMA = pa.schema([(name, pa.string()) for name in (
    "row_id", "persona_source", "persona", "model_id", "prompt", "input", "response", "finish_reason", "error")])


class GenerateConfig(Settings):
    """One response per test row and persona source (gold/retr chosen/rejected, system, none)."""

    data: str = Field(description="augmented folder or .jsonl/.parquet file holding the split")
    split: str = Field(TEST_SPLIT, description="the split to answer")
    output: str = Field(description="folder or s3:// prefix; responses go to <output>/<model_id>/")
    engine: EngineSettings = EngineSettings(sampling=SamplingSettings(max_tokens=256, stop=["\nPrompt:", "\nPersona:"]))
    model_id: str = Field(description="label for this model in outputs and reports, e.g. PT-DPO or DPO")
    mode: Literal["persona", "plain", "fewshot"] = Field(
        "persona", description="how the model was trained: persona (PT template), plain (no personas: the persona "
        "goes into the prompt in plain words), fewshot (a base model shown k exemplars)")
    persona_sources: list[Literal[PERSONA_SOURCES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["gold-chosen"], description=f"which personas to answer for: {', '.join(PERSONA_SOURCES)}")
    system_persona: str | None = Field(None, description="the persona of source `system`; none: the dataset "
                                       "domain's own (evaluation/domains.py)")
    prime_mnemonics: bool = Field(True, description="start answers to mnemonic prompts with '<Term> sounds like' "
                                  "(the paper's protocol); the prime is kept in the saved response")
    index: str | None = Field(None, description="retrieve retr-* personas from this index instead of reading "
                              "them from `data`")
    fewshot_data: str | None = Field(None, description="folder/file with the fewshot split (default: `data`)")
    fewshot_k: int = Field(3, ge=1, description="exemplars in a fewshot prompt")
    limit: int | None = Field(None, gt=0, description="answer only the first N rows by id")
    shard_size: int = Field(500, gt=0, description="responses per output shard")
    tracking: TrackingSettings = tracking_field()

    @model_validator(mode="after")
    def _sources_fit_mode(self):
        if "model" not in self.engine.model_fields_set:
            raise ValueError("engine.model: name the model to generate with (a merged model folder, 'tiny', or the "
                             "served name for backend openai)")
        if not self.persona_sources:
            raise ValueError("persona_sources: name at least one source")
        return self


def load_test_rows(data: str, split: str, limit: int | None = None, index: str | None = None) -> list[dict]:
    """Rows of `split` sorted by id (first `limit`); with `index`, retr_* personas retrieved here."""
    rows = read_split(data, split)
    for row in rows:
        row["pair_id"] = row_id(row)
    rows.sort(key=lambda r: str(r.get("pair_id")))
    rows = rows[:limit] if limit else rows
    if index:
        from persona_ray.retrieval.search import PersonaRetriever, QueryError

        retriever = PersonaRetriever.load(index)
        for row in rows:
            try:
                row.update(retriever.retrieved(row.get("prompt")))
            except QueryError:
                pass  # the row is quarantined in build_requests with its prompt's reason
    return rows


def persona_for(row: dict, source: str, cfg: GenerateConfig) -> str | None:
    if source == "none":
        return None
    if source == "system":
        return cfg.system_persona or system_persona(row.get("domain"))
    value = row.get(SOURCE_FIELD[source])
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{SOURCE_FIELD[source]}: missing or empty")
    return value


def model_input(prompt: str, persona: str | None, cfg: GenerateConfig, fewshot: list[dict], domain: str | None) -> str:
    """The text the model is asked to continue, for its training mode."""
    if cfg.mode == "fewshot":
        return fewshot_prompt(fewshot, cfg.fewshot_k, prompt, persona, domain=domain)
    return inference_input(prompt, persona, persona_template=cfg.mode == "persona")


def build_requests(rows: list[dict], cfg: GenerateConfig, fewshot: list[dict], done: set[str]):
    """(requests not yet answered, quarantined rows with field and reason)."""
    requests, quarantine = [], []
    for number, row in enumerate(rows):
        row_id = row.get("pair_id")
        for source in cfg.persona_sources:
            if not isinstance(row_id, str) or not row_id:
                quarantine.append({"row": number, "row_id": row_id, "persona_source": source,
                                   "reason": "pair_id: missing or not a string"})
                continue
            if key_of(row_id, source) in done:
                continue
            if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                quarantine.append({"row": number, "row_id": row_id, "persona_source": source,
                                   "reason": "prompt: missing, empty or not a string"})
                continue
            try:
                persona = persona_for(row, source, cfg)
                text = model_input(row.get("prompt"), persona, cfg, fewshot, row.get("domain"))
            except ValueError as exc:
                quarantine.append({"row": number, "row_id": row_id, "persona_source": source, "reason": str(exc)})
                continue
            prime = response_prime(row["prompt"], row.get("domain")) if cfg.prime_mnemonics else None
            if prime:
                text = f"{text} {prime}"
            requests.append({"row_id": row_id, "persona_source": source, "persona": persona, "model_id": cfg.model_id,
                             "question": row["prompt"], "model_input": text, "prompt": text, "prime": prime or ""})
    return requests, quarantine


def _records(batch: dict[str, Any]) -> dict[str, Any]:
    """Engine rows → RESPONSE_SCHEMA columns. Engines consume "prompt" (the model input), so requests
    carry it twice ("model_input") and the user's own prompt as "question"."""
    personas = [p if isinstance(p, str) else None for p in batch["persona"]]  # source none: no persona, not NaN
    # A primed answer ("Negligible sounds like ...") is saved whole: the prime, then what the model wrote.
    responses = [f"{prime} {str(text).strip()}".strip() for prime, text in zip(batch["prime"], batch["generated_text"])]
    return {"row_id": batch["row_id"], "persona_source": batch["persona_source"], "persona": personas,
            "model_id": batch["model_id"], "prompt": batch["question"], "input": batch["model_input"],
            "response": responses,
            "finish_reason": batch["finish_reason"], "error": batch["error"]}


def run_generate(cfg: GenerateConfig) -> dict[str, Any]:
    """Generate (or resume) responses for every (test row, persona source); returns counts."""
    import ray.data

    from persona_ray.core import preflight
    from persona_ray.core.ray_runtime import ensure_ray

    preflight.check_input("data", cfg.data)
    preflight.check_output("output", cfg.output)
    preflight.check_engine("engine", cfg.engine)
    folder = storage.join(cfg.output, cfg.model_id)
    responses_uri = storage.join(folder, "responses")
    needs_retrieval = any(source.startswith("retr-") for source in cfg.persona_sources)
    rows = load_test_rows(cfg.data, cfg.split, cfg.limit, cfg.index if needs_retrieval else None)
    fewshot = read_split(cfg.fewshot_data or cfg.data, "fewshot") if cfg.mode == "fewshot" else []
    done = set(done_keys(responses_uri, KEY).to_pylist())
    requests, quarantine = build_requests(rows, cfg, fewshot, done)
    storage.write_bytes(storage.join(folder, "quarantine.jsonl"),
                        "".join(json.dumps(q, default=str) + "\n" for q in quarantine).encode())
    log.info("generate %s: %d rows × %d sources, %d already done, %d to ask, %d quarantined", cfg.model_id,
             len(rows), len(cfg.persona_sources), len(done), len(requests), len(quarantine),
             extra={"stage": "generate", "model_id": cfg.model_id, "rows": len(rows), "resumed": len(done),
                    "to_ask": len(requests), "quarantined": len(quarantine)})
    writer = ShardWriter(responses_uri, RESPONSE_SCHEMA, cfg.shard_size)
    if requests:
        ensure_ray()
        generated = cfg.engine.generate(ray.data.from_items(requests))
        for batch in generated.map_batches(_records, batch_format="numpy").iter_batches(batch_format="pyarrow",
                                                                                       batch_size=None):
            writer.add(batch)
            progress.update(writer.rows_written + writer.buffered, len(requests), "responses")
    writer.close()
    summary = {"model_id": cfg.model_id, "rows": len(rows), "resumed": len(done), "generated": writer.rows_written,
               "quarantined": len(quarantine), "output": responses_uri}
    storage.write_json({**summary, "config": cfg.model_dump(exclude={"engine": {"openai"}})}, storage.join(folder, "generate.json"))
    log_job_run(cfg.tracking, "generate", cfg, flat_metrics(summary), name=cfg.tracking.run_name and
                f"{cfg.tracking.run_name}-{cfg.model_id}")
    return summary
