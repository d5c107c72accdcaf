"""Persona inference end to end: real Ray Data + vLLM (CPU) with the tiny model, S3 on moto."""

from __future__ import annotations

import json
import re

import pytest

from persona_ray.core import storage
from persona_ray.inference.infer import InferConfig, run_infer
from persona_ray.inference.prompt import TEMPLATE_VERSION
from persona_ray.inference.parse import guided_regex
from persona_ray.core.shards import read_shards
from tests.helpers import SAMPLE_PAIRS

pytestmark = pytest.mark.slow

# Small guided bounds so that max_tokens always covers the longest match (a token is >= 1 char).
SETTINGS = {"engine": {"model": "tiny", "guided_decoding": True, "sampling": {"max_tokens": 128},
                       "vllm": {"batch_size": 8}},
            "max_attribute_chars": 40, "max_preference_chars": 60, "shard_size": 8}

# Planted rows that break the contract, one of each kind (8 of 68 rows = 12 %).
PLANTED = [
    ('{"id": "bad-missing", "prompt": "Q?", "chosen": "A."}', "bad-missing", "field 'rejected': missing"),
    ('{"id": "bad-empty", "prompt": "Q?", "chosen": "  ", "rejected": "B."}', "bad-empty", "field 'chosen': empty"),
    ('{"id": "bad-same", "prompt": "Q?", "chosen": "Same.", "rejected": "Same."}', "bad-same",
     "identical to chosen"),
    ('{"id": "bad-type", "prompt": ["Q?"], "chosen": "A.", "rejected": "B."}', "bad-type",
     "field 'prompt': expected text, got list"),
    ('{"id": "bad-json", "prompt": "Q?", "chosen": "A."', None, "not valid JSON"),
    ('["not", "an", "object"]', None, "expected a JSON object, got list"),
    (json.dumps({"id": "bad-long", "prompt": "word " * 6000, "chosen": "A.", "rejected": "B."}), "bad-long",
     "PI prompt needs"),
    (json.dumps({"id": "safety_qa-000", "prompt": "A different question?", "chosen": "A.", "rejected": "B."}),
     "safety_qa-000", "field 'pair_id'"),
]


def planted_lines() -> list[str]:
    lines = [line for line in SAMPLE_PAIRS.read_text().splitlines() if line.strip()]
    for i, (line, _, _) in enumerate(PLANTED):
        lines.insert(7 * i + 3, line)
    return lines


def personas_by_key(output: str) -> dict[tuple[str, str], dict]:
    table = read_shards(storage.join(output, "personas"))
    rows = table.to_pylist()
    keys = [(r["pair_id"], r["side"]) for r in rows]
    assert len(keys) == len(set(keys)), "a (pair_id, side) appears twice"
    return dict(zip(keys, rows))


@pytest.fixture(scope="module")
def s3_run(s3_server, ray_local):
    """One uninterrupted run: input from S3, output to S3."""
    import boto3

    boto3.client("s3").create_bucket(Bucket="pi-data")
    storage.write_bytes("s3://pi-data/in/pairs.jsonl", "\n".join(planted_lines()).encode())
    cfg = InferConfig(pairs={"input": "s3://pi-data/in/pairs.jsonl"}, output="s3://pi-data/out", **SETTINGS)
    manifest = run_infer(cfg)
    return cfg, manifest


def test_guided_run_from_and_to_s3(s3_run):
    cfg, manifest = s3_run
    counts = manifest["counts"]
    assert counts["input_rows"] == 68 and counts["valid_pairs"] == 60
    assert counts["persona_records"] == counts["unique_keys"] == 120
    personas = personas_by_key(cfg.output)
    assert {side for _, side in personas} == {"chosen", "rejected"}
    # Guided decoding: every output has the persona form. Only content checks may reject one.
    pattern = re.compile(guided_regex(cfg.max_attribute_chars, cfg.max_preference_chars))
    assert all(pattern.fullmatch(r["raw_text"]) for r in personas.values())
    # Content rules only: a random model's text may be degenerate or name a protected attribute.
    content_reasons = ("protected attribute", "degenerate")
    assert all(r["valid"] or any(c in r["reason"] for c in content_reasons) for r in personas.values())
    assert all(r["model"] == "tiny" and r["template_version"] == TEMPLATE_VERSION for r in personas.values())
    assert storage.read_json("s3://pi-data/out/manifest.json")["counts"] == counts


def test_quarantine_holds_exactly_the_planted_rows(s3_run):
    cfg, manifest = s3_run
    quarantine = read_shards(storage.join(cfg.output, "quarantine")).to_pylist()
    assert len(quarantine) == len(PLANTED) == manifest["counts"]["quarantined"]
    for line, row_id, reason in PLANTED:
        matches = [q for q in quarantine if reason in q["reason"]]
        assert len(matches) == 1, (reason, quarantine)
        if row_id:
            assert matches[0]["row_id"] == row_id
    assert any(q["raw"] == PLANTED[4][0] for q in quarantine)  # the broken line is kept verbatim
    # The 60 good pairs all got both personas: nothing valid was dropped.
    good_ids = {json.loads(line)["id"] for line in SAMPLE_PAIRS.read_text().splitlines() if line.strip()}
    assert {pid for pid, _ in personas_by_key(cfg.output)} == good_ids


class _EngineMustNotStart:
    """Stands in for the engine's actor: starting it fails the job, as an engine start is what is tested."""

    def __init__(self):
        raise AssertionError("the rerun started the generation step's actor (an engine)")

    def __call__(self, batch):
        return batch


def test_a_rerun_with_nothing_to_write_starts_no_engine(s3_run, monkeypatch):
    """Every persona of the run above is written: a rerun resumes all of them, writes nothing, and
    never runs the generation step, so no vLLM engine starts (minutes of a cluster's GPUs for a
    large model). The engine is replaced by an actor that fails the job if it ever starts."""
    cfg, first = s3_run
    import ray

    monkeypatch.setattr(type(cfg.engine), "generate", lambda self, requests, **kwargs: requests.map_batches(
        _EngineMustNotStart, compute=ray.data.ActorPoolStrategy(size=1)))
    counts = run_infer(cfg)["counts"]
    assert counts["resumed_records"] == first["counts"]["persona_records"] == 120
    assert counts["written_this_run"] == 0 and counts["persona_records"] == 120
