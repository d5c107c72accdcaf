"""Augmentation: join personas to pairs, deterministic prompt-grouped splits, side files."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from persona_ray.core import storage
from persona_ray.dataset.augment import AugmentConfig, join_group, run_augment
from persona_ray.dataset.splits import SplitSettings, assign_split, split_rows
from persona_ray.core.schema import PERSONA_SCHEMA
from persona_ray.core.shards import ShardWriter
from tests.helpers import SAMPLE_PAIRS, read_jsonl


def _persona_records(pair_ids, invalid=(), skip=(), orphans=()):
    records = []
    for pid in [*pair_ids, *orphans]:
        for side in ("chosen", "rejected"):
            if (pid, side) in skip:
                continue
            bad = (pid, side) in invalid
            records.append({"pair_id": pid, "side": side, "persona": "" if bad else
                            f"The user is a {side} reader and prefers {pid} answers.", "raw_text": "x",
                            "model": "m", "template_version": "pi-v1", "valid": not bad,
                            "reason": "no 'The user ...' sentence in output" if bad else "",
                            "num_input_tokens": 1, "num_output_tokens": 1})
    return pa.Table.from_pylist(records, schema=PERSONA_SCHEMA)


def join_personas(rows, personas):
    """join_group over each pair id (as the job's groupby runs it): (augmented rows, side lists)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["id"], []).append({"pair_id": r["id"], "kind": "pair", "content_key": 0,
                                               **{k: r[k] for k in ("prompt", "chosen", "rejected", "domain",
                                                                    "source")}})
    for p in personas.to_pylist():
        groups.setdefault(p["pair_id"], []).append({**p, "kind": "persona"})
    joined, side = [], {name: [] for name in ("invalid_personas", "pairs_without_personas", "orphan_personas")}
    for pair_id in sorted(groups):
        for out in join_group(groups[pair_id], SplitSettings()):
            if out["status"] == "ok":
                joined.append(out)
            else:
                side[out["status"]].append(json.loads(out["detail"]))
    return joined, side


def test_join_excludes_invalid_and_reports_missing_and_orphans():
    rows = read_jsonl(SAMPLE_PAIRS)[:6]
    ids = [r["id"] for r in rows]
    personas = _persona_records(ids, invalid={(ids[0], "rejected")}, skip={(ids[1], "chosen")},
                                orphans=["ghost-1"])
    joined, side = join_personas(rows, personas)
    assert [r["pair_id"] for r in joined] == ids[2:]
    assert joined[0]["chosen_persona"] == f"The user is a chosen reader and prefers {ids[2]} answers."
    assert side["invalid_personas"] == [{"pair_id": ids[0], "chosen_reason": "",
                                         "rejected_reason": "no 'The user ...' sentence in output"}]
    assert side["pairs_without_personas"] == [{"pair_id": ids[1], "missing": ["chosen"]}]
    assert side["orphan_personas"] == [{"pair_id": "ghost-1"}]


def test_join_applies_the_shared_persona_rules_to_records_marked_valid():
    """Records from another tool (or older rules) that say valid are checked again."""
    rows = read_jsonl(SAMPLE_PAIRS)[:3]
    ids = [r["id"] for r in rows]
    personas = _persona_records(ids).to_pylist()
    personas[0]["persona"] = "The user is a devout Christian and prefers scripture."  # protected attribute
    personas[3]["persona"] = "The user is calm\x1b[2J and prefers detail."  # control character
    joined, side = join_personas(rows, pa.Table.from_pylist(personas, schema=PERSONA_SCHEMA))
    assert [r["pair_id"] for r in joined] == ids[2:]
    assert side["invalid_personas"] == [
        {"pair_id": ids[0], "chosen_reason": "mentions a protected attribute (religion: 'devout')",
         "rejected_reason": ""},
        {"pair_id": ids[1], "chosen_reason": "", "rejected_reason": "contains control characters"},
    ]


def test_splits_group_by_prompt_and_never_leak_test_prompts():
    cfg = SplitSettings(test=0.3, fewshot=0.1, val=0.1)
    rows = [{"pair_id": f"p{i}", "prompt": f"Question number {i // 3}?"} for i in range(300)]  # 3 pairs a prompt
    splits = split_rows(rows, cfg)
    test_prompts = {r["prompt"] for r in splits["test"]}
    for name in ("fewshot", "sft_train", "sft_val", "dpo_train", "dpo_val"):
        assert not test_prompts & {r["prompt"] for r in splits[name]}, name
    assert splits["sft_train"] == splits["dpo_train"]  # shared train pool (the default)
    assert sum(len(splits[n]) for n in ("test", "fewshot", "sft_train", "sft_val")) == 300
    assert 0.15 < len(splits["test"]) / 300 < 0.45
    # whitespace and case do not move a prompt to another split
    assert assign_split("What  is X?", cfg) == assign_split("what is x?", cfg)


def test_unshared_pools_split_train_between_sft_and_dpo():
    cfg = SplitSettings(share_train_pool=False)
    splits = split_rows([{"pair_id": f"p{i}", "prompt": f"Q{i}"} for i in range(400)], cfg)
    assert splits["sft_train"] and splits["dpo_train"]
    assert not {r["pair_id"] for r in splits["sft_train"]} & {r["pair_id"] for r in splits["dpo_train"]}


def test_the_papers_shape_exact_test_and_fewshot_sizes_and_disjoint_sft_dpo_pools():
    cfg = SplitSettings(test_size=500, fewshot_size=5, val=0.2, share_train_pool=False)
    rows = [{"pair_id": f"p{i:05d}", "prompt": f"Question {i}?"} for i in range(1600)]
    splits = split_rows(rows, cfg)
    assert len(splits["test"]) == 500 and len(splits["fewshot"]) == 5
    ids = {name: {r["pair_id"] for r in split} for name, split in splits.items()}
    for a in ids:  # every pair in exactly one split, SFT and DPO pools disjoint
        for b in ids:
            assert a == b or not ids[a] & ids[b], (a, b)
    assert sum(len(v) for v in ids.values()) == 1600
    train = len(splits["sft_train"]) + len(splits["dpo_train"])
    assert 0.15 < (len(splits["sft_val"]) + len(splits["dpo_val"])) / 1095 < 0.25
    assert 0.4 < len(splits["sft_train"]) / train < 0.6
    # Deterministic, and a prompt's pairs stay together: 3 pairs a prompt, 40 test prompts = 120 rows.
    assert split_rows(rows, cfg) == splits
    grouped = split_rows([{"pair_id": f"p{i}", "prompt": f"Q{i // 3}"} for i in range(300)],
                         SplitSettings(test_size=40, fewshot_size=5))
    assert len(grouped["test"]) == 120 and len(grouped["fewshot"]) == 15
    with pytest.raises(ValueError, match="splits.test_size: 100 test"):
        split_rows([{"pair_id": f"p{i}", "prompt": f"Q{i}"} for i in range(100)], SplitSettings(test_size=100))
    # An exact size replaces its share, so only the remaining shares must leave a train pool.
    assert SplitSettings(test=0.9, test_size=10, val=0.1).exact


def test_split_config_must_leave_a_train_pool():
    with pytest.raises(ValueError, match="leave a train pool"):
        SplitSettings(test=0.5, fewshot=0.3, val=0.3)


@pytest.mark.usefixtures("ray_local")
def test_augment_job_writes_identical_splits_twice(tmp_path):
    rows = read_jsonl(SAMPLE_PAIRS)
    ids = [r["id"] for r in rows]
    writer = ShardWriter(str(tmp_path / "pi" / "personas"), PERSONA_SCHEMA, shard_size=50)
    writer.add(_persona_records(ids, invalid={(ids[5], "chosen")}, orphans=["ghost-1"]))
    writer.close()
    outputs = []
    for run in ("a", "b"):
        cfg = AugmentConfig(pairs={"input": str(SAMPLE_PAIRS)}, personas=str(tmp_path / "pi"),
                            output=str(tmp_path / run))
        manifest = run_augment(cfg)
        outputs.append({f.name: f.read_bytes() for f in (tmp_path / run).iterdir() if f.is_file()})
    counts = manifest["counts"]
    assert counts["augmented_pairs"] == 59 and counts["excluded_invalid_persona"] == 1
    assert counts["orphan_persona_pairs"] == 1 and counts["pairs_without_personas"] == 0
    assert outputs[0].keys() == outputs[1].keys() and "test.parquet" in outputs[0]
    assert all(outputs[0][name] == outputs[1][name] for name in outputs[0] if name != "augment_manifest.json")

    import datasets

    loaded = datasets.load_from_disk(str(tmp_path / "a" / "hf"))
    assert set(loaded) == {"fewshot", "sft_train", "sft_val", "dpo_train", "dpo_val", "test"}
    assert len(loaded["test"]) == counts["splits"]["test"]
    test_rows = [json.loads(line) for line in (tmp_path / "a" / "test.jsonl").read_text().splitlines()]
    assert [r["pair_id"] for r in test_rows] == loaded["test"]["pair_id"]
    assert storage.read_json(str(tmp_path / "a" / "augment_manifest.json"))["counts"] == counts


@pytest.mark.usefixtures("ray_local")
def test_augment_reads_and_writes_s3(s3_bucket, tmp_path):
    rows = read_jsonl(SAMPLE_PAIRS)[:20]
    storage.write_bytes(f"s3://{s3_bucket}/pairs/pairs.jsonl",
                        "".join(json.dumps(r) + "\n" for r in rows).encode())
    writer = ShardWriter(f"s3://{s3_bucket}/pi/personas", PERSONA_SCHEMA, shard_size=100)
    writer.add(_persona_records([r["id"] for r in rows]))
    writer.close()
    cfg = AugmentConfig(pairs={"input": f"s3://{s3_bucket}/pairs/pairs.jsonl"}, personas=f"s3://{s3_bucket}/pi",
                        output=f"s3://{s3_bucket}/aug")
    assert run_augment(cfg)["counts"]["augmented_pairs"] == 20
    names = {uri.rsplit("/", 1)[-1] for uri in storage.list_files(f"s3://{s3_bucket}/aug")}
    assert {"test.parquet", "sft_train.jsonl", "augment_manifest.json", "dataset_dict.json"} <= names
    total = sum(storage.read_parquet(f"s3://{s3_bucket}/aug/{s}.parquet").num_rows
                for s in ("fewshot", "sft_train", "sft_val", "test"))
    assert total == 20


@pytest.mark.usefixtures("ray_local")
def test_augment_job_exact_sizes_match_the_in_memory_splits_and_counts_bad_rows(tmp_path):
    """The job decides exact-size splits from cut points found over the distinct prompts (Ray Data
    sorts them): the same splits as split_rows in memory. A row that breaks the contract and a
    second row with a known id are counted, never written."""
    rows = read_jsonl(SAMPLE_PAIRS)
    ids = [r["id"] for r in rows]
    extra = [{**rows[3], "chosen": "another answer"}, {"id": "broken", "prompt": "", "chosen": "a", "rejected": "b"}]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in [*rows, *extra]))
    writer = ShardWriter(str(tmp_path / "pi" / "personas"), PERSONA_SCHEMA, shard_size=40)
    writer.add(_persona_records(ids))
    writer.close()
    splits = SplitSettings(test_size=10, fewshot_size=3, share_train_pool=False)
    manifest = run_augment(AugmentConfig(pairs={"input": str(pairs)}, personas=str(tmp_path / "pi"),
                                         output=str(tmp_path / "out"), splits=splits, formats=["parquet"]))
    counts = manifest["counts"]
    assert counts["pairs_read"] == 62 and counts["pairs_invalid_input"] == 1 and counts["duplicate_pair_ids"] == 1
    assert counts["augmented_pairs"] == 60
    expected = split_rows([{"pair_id": r["id"], "prompt": r["prompt"]} for r in rows], splits)
    for name, split in expected.items():
        written = storage.read_parquet(str(tmp_path / "out" / f"{name}.parquet")).column("pair_id").to_pylist()
        assert written == [r["pair_id"] for r in split], name
    assert counts["splits"]["test"] >= 10 and counts["splits"]["fewshot"] >= 3
    assert not (tmp_path / "out" / "test.jsonl").exists()  # only the formats asked for
