"""Persona inference (PI) job: preference pairs in, two persona records per pair out.

    read input -> adapt + validate -> group by pair id with the personas already written (todo.py:
    bad rows and repeated ids -> quarantine/) -> a PI request per side still to write
    -> engine (vLLM on Ray Data, or an OpenAI-compatible endpoint) -> parse -> personas/ shards

Nothing proportional to the input stays on the driver: the checks, the grouping and the counts
run in Ray workers; the driver streams the results into shards a batch at a time.

Output folder (local or s3://):
    personas/part-*.parquet     persona records (schema.PERSONA_SCHEMA), each (pair_id, side) once
    quarantine/part-*.parquet   input rows that broke the contract, with the reason
    manifest.json               counts, model, template version, timings, throughput

Running the same job again on the same output resumes: records already written are skipped.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from persona_ray.core import preflight, progress, storage
from persona_ray.core.errors import UserError
from persona_ray.core.models import resolve_model
from persona_ray.core.settings import Settings
from persona_ray.core.tracking import TrackingSettings, flat_metrics, log_job_run, tracking_field
from persona_ray.engines.settings import EngineSettings, SamplingSettings
from persona_ray.core.persona import ParsedPersona
from persona_ray.core.persona_gate import gate_checked
from persona_ray.inference.parse import copies_exemplar, guided_regex, parse_persona
from persona_ray.inference.prompt import TEMPLATE_VERSION, build_pi_prompt, build_prefix, build_query, check_k_shot
from persona_ray.inference.input_pairs import PairSource, read_pairs
from persona_ray.core.schema import PERSONA_SCHEMA, QUARANTINE_SCHEMA
from persona_ray.core.groups import group_in_order
from persona_ray.inference.contrast import ContrastSettings, contrastive_generate
from persona_ray.core.shards import ShardWriter, committed_rows, personas_folder, shards_dataset
from persona_ray.inference.todo import of_kind, todo_dataset

log = logging.getLogger(__name__)


class InferConfig(Settings):
    """Persona inference: two personas (chosen, rejected) for every preference pair."""

    pairs: PairSource
    output: str = Field(description="output folder or s3:// prefix (personas/, quarantine/, manifest.json)")
    engine: EngineSettings = EngineSettings(sampling=SamplingSettings(max_tokens=128))
    k_shot: int = Field(3, ge=0, description="exemplars per domain in the PI prompt")
    exemplars: str | None = Field(None, description="YAML file of exemplars per domain; default: the bundled ones")
    max_attribute_chars: int = Field(120, gt=3, description="guided decoding: longest attribute part of a persona")
    max_preference_chars: int = Field(240, gt=3, description="guided decoding: longest preference part")
    contrast: ContrastSettings | None = Field(
        None, description="pick each side's persona among sampled candidates by how much better its own prompt "
        "explains it than the other side's (inference/contrast.py; vLLM only); none: one greedy persona a side")
    share: float | None = Field(None, gt=0, le=1, description="infer only this share of the pairs, picked by a hash "
                                "of the pair id (the same pairs on every run); the rest are left to another run, "
                                "e.g. a PI student's (pipeline `pi_student`)")
    written_elsewhere: str | None = Field(None, description="a persona folder another run wrote (a PI student's "
                                          "teacher): pairs it holds both personas of are left, not inferred again")
    shard_size: int = Field(1000, gt=0, description="persona records per output shard")
    commit_every_s: float = Field(30.0, gt=0, description="also write a (smaller) shard when this many seconds "
                                  "have passed since the last one: a kill loses the rows in flight and at most "
                                  "this many seconds of finished ones")
    progress_every_s: float = Field(15.0, gt=0, description="seconds between progress log lines")
    tracking: TrackingSettings = tracking_field()


class TokenCounter:
    """Counts tokens with the model's tokenizer, or estimates (3 characters a token) without one."""

    def __init__(self, model: str):
        try:
            from transformers import AutoTokenizer

            # Local files only: a hosted model's name must never send us to a model hub.
            self.tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
        except Exception:  # noqa: BLE001 - hosted models have no local tokenizer
            log.warning("no tokenizer for %s: estimating prompt lengths from characters", model)
            self.tokenizer = None

    def __call__(self, text: str) -> int:
        if self.tokenizer is None:
            return len(text) // 3 + 1
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])


class PromptFits:
    """Stage check for pairs: both PI prompts plus the output budget fit the model context."""

    def __init__(self, cfg: InferConfig, model_path: str):
        self.k_shot, self.exemplars, self.model_path = cfg.k_shot, cfg.exemplars, model_path
        self.budget = cfg.engine.context_tokens() - cfg.engine.sampling.max_tokens
        self.count: TokenCounter | None = None  # loaded where the check runs (a Ray worker)
        self.prefix_tokens: dict[str, int] = {}

    def __call__(self, pair) -> str | None:
        if self.count is None:
            self.count = TokenCounter(self.model_path)
        if pair.domain not in self.prefix_tokens:
            self.prefix_tokens[pair.domain] = self.count(build_prefix(pair.domain, self.k_shot, self.exemplars))
        # Both sides hold the same texts, so one side's length stands for both (+ a margin for
        # BPE merges across the prefix boundary and a chat template).
        query = build_query(pair.prompt, pair.chosen, pair.rejected, "chosen")
        needed = self.prefix_tokens[pair.domain] + self.count(query) + 16
        if needed > self.budget:
            return f"field 'prompt': PI prompt needs {needed} tokens; the model context leaves {self.budget}"
        return None


def _expand_requests(batch: pa.Table, k_shot: int, exemplars: str | None) -> pa.Table:
    """Each todo pair -> one PI request per side not yet written (its domain travels with it: the
    record is checked against the exemplars its prompt showed)."""
    rows = []
    for pair in batch.to_pylist():
        for side in pair["sides"].split(",") if pair["sides"] else ():
            rows.append({"pair_id": pair["pair_id"], "side": side, "domain": pair["domain"],
                         "prompt": build_pi_prompt(pair["prompt"], pair["chosen"], pair["rejected"], side,
                                                   pair["domain"], k_shot, exemplars)})
    return pa.Table.from_pylist(rows, schema=pa.schema([("pair_id", pa.string()), ("side", pa.string()),
                                                        ("domain", pa.string()), ("prompt", pa.string())]))


def _to_records(batch: dict[str, np.ndarray], model: str, k_shot: int, exemplars: str | None) -> dict[str, Any]:
    """Engine rows -> persona records. Each parsed persona goes through the persona gate (the rules,
    then the embedding check for protected attributes said indirectly: one encoder call per batch,
    the encoder loaded once per worker), and gets `copied_exemplar`: True when the valid persona is a
    near copy of an exemplar persona its prompt showed (k_shot of the pair's domain). A copy stays
    valid; the flag lets later stages tell it from a persona about the pair."""
    parsed = [ParsedPersona("", False, f"engine error: {str(error)[:300]}") if error
              else parse_persona(str(text), truncated=finish == "length")
              for text, finish, error in zip(batch["generated_text"], batch["finish_reason"], batch["error"])]
    parsed = gate_checked(parsed)
    copied = [p.valid and copies_exemplar(p.persona, str(domain), k_shot, exemplars)
              for p, domain in zip(parsed, batch["domain"])]
    n = len(parsed)
    return {
        "pair_id": batch["pair_id"], "side": batch["side"],
        "persona": np.array([p.persona for p in parsed], dtype=object),
        "raw_text": batch["generated_text"], "model": np.array([model] * n, dtype=object),
        "template_version": np.array([TEMPLATE_VERSION] * n, dtype=object),
        "valid": np.array([p.valid for p in parsed], dtype=bool),
        "reason": np.array([p.reason for p in parsed], dtype=object),
        "copied_exemplar": np.array(copied, dtype=bool),
        "num_input_tokens": batch["num_input_tokens"], "num_output_tokens": batch["num_output_tokens"],
    }


def _plan(cfg: InferConfig, model_path: str, personas_uri: str, quarantine_uri: str):
    """Read and check every input row once, meet each pair with its written personas (Ray Data,
    grouped by pair id), and write the quarantine. Returns the todo rows (materialized: in the
    object store, spilled to disk when large), input rows, quarantine reasons, this run's valid pairs,
    valid pairs left to another run (`share`, `written_elsewhere`), sides to write."""
    from ray.data.aggregate import Count, Sum

    storage.delete(quarantine_uri)  # recomputed in full on every run: deterministic
    elsewhere = personas_folder(cfg.written_elsewhere) if cfg.written_elsewhere else None
    planned = todo_dataset(read_pairs(cfg.pairs, PromptFits(cfg, model_path), keep_raw=True), personas_uri,
                           elsewhere, cfg.share)
    planned = planned.materialize()
    quarantine = ShardWriter(quarantine_uri, QUARANTINE_SCHEMA, shard_size=max(cfg.shard_size, 10_000))
    reasons: Counter[str] = Counter()
    for batch in planned.map_batches(of_kind, fn_args=("quarantine",), batch_format="pyarrow") \
            .iter_batches(batch_format="pyarrow", batch_size=4096):
        quarantine.add(pa.table({"row_id": batch["pair_id"], "reason": batch["reason"], "raw": batch["raw"]}))
        reasons.update(batch["reason"].to_pylist())
    quarantine.close()
    todo = planned.map_batches(of_kind, fn_args=("todo",), batch_format="pyarrow")
    totals = todo.map_batches(_count_sides, batch_format="pyarrow").aggregate(Count(), Sum("n"))  # one pass
    valid_pairs, to_write = int(totals["count()"]), int(totals["sum(n)"] or 0)
    left = planned.map_batches(of_kind, fn_args=("left",), batch_format="pyarrow").count() \
        if cfg.share is not None or cfg.written_elsewhere else 0
    return todo, valid_pairs + left + sum(reasons.values()), reasons, valid_pairs, left, to_write


def _count_sides(batch: pa.Table) -> pa.Table:
    n = [len(s.split(",")) if s else 0 for s in batch["sides"].to_pylist()]
    return pa.table({"n": pa.array(n, pa.int64())})


def check_infer(cfg: InferConfig) -> str:
    """Everything that can be checked before Ray or an engine starts (UserError otherwise): the
    input exists, the output is writable, k_shot fits the exemplars, the model loads or the
    endpoint answers. Returns the model's local path (or its name, for a hosted model)."""
    preflight.check_input("pairs.input", cfg.pairs.input)
    preflight.check_output("output", cfg.output)
    check_k_shot(cfg.k_shot, cfg.exemplars)
    if cfg.contrast is not None and cfg.engine.backend != "vllm":
        raise UserError("contrast: scores candidates with the model's own weights, which an HTTP endpoint does not "
                        "expose. Fix: engine.backend vllm, or leave contrast unset")
    model = preflight.check_engine("engine", cfg.engine)
    # A served model named like a local one ('tiny', a folder) still has a local tokenizer to count with.
    return resolve_model(model) if cfg.engine.backend == "openai" else model


def run_infer(cfg: InferConfig) -> dict[str, Any]:
    """Run (or resume) persona inference; returns the manifest."""
    from persona_ray.core.ray_runtime import ensure_ray

    started = time.time()
    model_path = check_infer(cfg)  # a local tokenizer counts prompt tokens, whatever the backend
    ensure_ray()
    personas_uri = storage.join(cfg.output, "personas")
    quarantine_uri = storage.join(cfg.output, "quarantine")

    already = committed_rows(personas_uri)  # also removes unreadable shards: their rows are redone
    todo, total_rows, bad_reasons, valid_pairs, left, expected_new = _plan(cfg, model_path, personas_uri,
                                                                           quarantine_uri)
    validated_at = time.time()
    log.info("input: %d rows, %d valid pairs (%d more left to another run), %d quarantined, %d personas already "
             "written", total_rows, valid_pairs, left, sum(bad_reasons.values()), already,
             extra={"stage": "infer", "rows": total_rows, "valid_pairs": valid_pairs, "left_to_another_run": left,
                    "quarantined_by_reason": dict(bad_reasons), "resumed_records": already})

    regex = guided_regex(cfg.max_attribute_chars, cfg.max_preference_chars) if cfg.engine.guided_decoding else None
    if cfg.contrast is not None:
        generated = contrastive_generate(todo, cfg, model_path, regex)
    else:
        requests = todo.map_batches(_expand_requests, fn_args=(cfg.k_shot, cfg.exemplars), batch_format="pyarrow")
        generated = cfg.engine.generate(requests, regex=regex)
    records = generated.map_batches(_to_records, fn_args=(cfg.engine.model, cfg.k_shot, cfg.exemplars),
                                    batch_format="numpy")

    writer = ShardWriter(personas_uri, PERSONA_SCHEMA, cfg.shard_size, commit_every_s=cfg.commit_every_s)
    tokens = copies = 0
    last_report = time.time()
    first_result_at = None
    # Nothing left to write (a rerun of a finished job): no engine is started at all.
    batches = records.iter_batches(batch_format="pyarrow", batch_size=None) if expected_new else ()
    for batch in batches:
        first_result_at = first_result_at or time.time()  # roughly: when the engines were up
        writer.add(batch)
        progress.update(writer.rows_written + writer.buffered, expected_new, "personas")
        tokens += pc.sum(batch["num_input_tokens"]).as_py() or 0
        tokens += pc.sum(batch["num_output_tokens"]).as_py() or 0
        copies += pc.sum(batch["copied_exemplar"]).as_py() or 0
        if time.time() - last_report >= cfg.progress_every_s:
            last_report = time.time()
            done = writer.rows_written + writer.buffered
            elapsed = last_report - validated_at
            log.info("personas %d/%d  %.2f pairs/s  %.0f tokens/s", done, expected_new,
                     done / 2 / elapsed, tokens / elapsed,
                     extra={"stage": "infer", "records": done, "records_expected": expected_new,
                            "pairs_per_s": round(done / 2 / elapsed, 3), "tokens_per_s": round(tokens / elapsed)})
    writer.close()
    finished = time.time()

    manifest = _manifest(cfg, model_path, personas_uri, total_rows, valid_pairs, bad_reasons, already,
                         writer.rows_written, tokens, started, validated_at, finished)
    manifest["timings_s"]["first_result"] = round((first_result_at or finished) - validated_at, 3)
    manifest["counts"]["copied_exemplar_this_run"] = copies
    manifest["counts"]["left_to_another_run"] = left
    storage.write_json(manifest, storage.join(cfg.output, "manifest.json"))
    _log_summary(manifest)
    log_job_run(cfg.tracking, "infer", cfg, flat_metrics({k: manifest[k] for k in ("counts", "throughput", "timings_s")}))
    return manifest


def _manifest(cfg, model_path, personas_uri, total_rows, valid_pairs, bad_reasons, resumed, written, tokens,
              started, validated_at, finished) -> dict[str, Any]:
    records, unique_keys, valid, invalid_reasons = _output_counts(personas_uri)
    generate_s = finished - validated_at
    return {
        "input": cfg.pairs.input, "output": cfg.output, "model": cfg.engine.model, "model_path": model_path,
        "engine": cfg.engine.backend, "template_version": TEMPLATE_VERSION,
        "guided_decoding": cfg.engine.guided_decoding,
        "k_shot": cfg.k_shot, "contrast": cfg.contrast.model_dump() if cfg.contrast else None,
        "share": cfg.share, "written_elsewhere": cfg.written_elsewhere,
        "counts": {
            "input_rows": total_rows, "valid_pairs": valid_pairs, "quarantined": sum(bad_reasons.values()),
            "quarantine_reasons": dict(bad_reasons.most_common()), "persona_records": records,
            "unique_keys": unique_keys, "expected_records": 2 * valid_pairs,
            "resumed_records": resumed, "written_this_run": written, "valid_personas": valid,
            "invalid_personas": records - valid, "invalid_reasons": dict(invalid_reasons.most_common(20)),
        },
        "timings_s": {"validate": round(validated_at - started, 3), "generate": round(generate_s, 3),
                      "total": round(finished - started, 3)},
        "throughput": {"pairs_per_s": round(written / 2 / generate_s, 3) if generate_s > 0 else 0.0,
                       "tokens_per_s": round(tokens / generate_s, 1) if generate_s > 0 else 0.0,
                       "valid_pct": round(100.0 * valid / records, 2) if records else 0.0},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finished)),
    }


def _pair_summary(group: pa.Table) -> pa.Table:
    """One pair id's written records -> records, distinct sides, valid ones, invalid reasons."""
    invalid = group.filter(pc.invert(group["valid"]))["reason"].to_pylist()
    return pa.table({"records": [group.num_rows], "unique": [len(set(group["side"].to_pylist()))],
                     "valid": [group.num_rows - len(invalid)], "reasons": [invalid]})


def _output_counts(personas_uri: str, most_reasons: int = 1000) -> tuple[int, int, int, Counter]:
    """(records, distinct keys, valid, invalid reasons) over every written record, grouped by pair
    id in Ray workers: the driver sums one row per pair and keeps at most `most_reasons` reasons."""
    records = shards_dataset(personas_uri, ["pair_id", "side", "valid", "reason"])
    totals, reasons = Counter(), Counter()
    if records is None:
        return 0, 0, 0, reasons
    for batch in group_in_order(records, "pair_id", _pair_summary).iter_batches(batch_format="pyarrow"):
        for name in ("records", "unique", "valid"):
            totals[name] += pc.sum(batch[name]).as_py() or 0
        for reason in pc.list_flatten(batch["reasons"]).to_pylist():
            if reason in reasons or len(reasons) < most_reasons:
                reasons[reason] += 1
            else:
                reasons["(other reasons)"] += 1
    return totals["records"], totals["unique"], totals["valid"], reasons


def _log_summary(manifest: dict[str, Any]) -> None:
    c, t = manifest["counts"], manifest["throughput"]
    log.info(
        "done: %d valid pairs, %d quarantined; %d persona records (%d new, %d resumed), %.1f%% valid; "
        "%.2f pairs/s, %.0f tokens/s; %.1f s total",
        c["valid_pairs"], c["quarantined"], c["persona_records"], c["written_this_run"], c["resumed_records"],
        t["valid_pct"], t["pairs_per_s"], t["tokens_per_s"], manifest["timings_s"]["total"],
        extra={"stage": "infer", **c, **t, "seconds": manifest["timings_s"]["total"]},
    )
    if c["unique_keys"] != c["persona_records"]:
        log.error("output holds %d records for %d keys: duplicates found", c["persona_records"], c["unique_keys"])
