"""The hand-written reference persona set (dataset/reference.py): its size, its rules, its splits."""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq

from persona_ray.core.persona import near_copy, validate_persona
from persona_ray.dataset.reference import DOMAINS, reference_rows, write_reference
from persona_ray.dataset.splits import prompt_key
from persona_ray.evaluation.domains import mnemonic_term
from persona_ray.inference.prompt import exemplar_personas


def test_reference_set_is_large_valid_and_specific():
    rows = reference_rows()
    by_domain = Counter(row["domain"] for row in rows)
    assert len(rows) >= 300 and set(by_domain) == set(DOMAINS) and min(by_domain.values()) >= 75, by_domain
    assert len({row["id"] for row in rows}) == len(rows)
    assert len({prompt_key(row["prompt"]) for row in rows}) == len(rows), "one pair a prompt"
    exemplars = exemplar_personas()
    personas = [(row["id"], side, row[f"{side}_persona"]) for row in rows for side in ("chosen", "rejected")]
    refused = [(rid, side, validate_persona(p).reason) for rid, side, p in personas if not validate_persona(p).valid]
    assert not refused, refused[:5]
    same = [row["id"] for row in rows if near_copy(row["chosen_persona"], row["rejected_persona"])]
    assert not same, f"a pair's two personas must differ: {same[:5]}"
    copies = [rid for rid, _, p in personas if any(near_copy(p, e) for e in exemplars)]
    assert not copies, f"copies of a PI exemplar: {copies[:5]}"
    texts = Counter(" ".join(p.lower().split()) for _, _, p in personas)
    assert texts.most_common(1)[0][1] == 1, "every persona is written for its own pair"
    assert all(mnemonic_term(row["prompt"]) for row in rows if row["domain"] == "mnemonic")


def test_reference_splits_keep_each_prompt_in_one_split_with_every_domain_in_test(tmp_path):
    rows = reference_rows()
    splits = Counter(row["split"] for row in rows)
    assert set(splits) == {"train", "val", "test"}
    assert 0.18 <= splits["test"] / len(rows) <= 0.32 and splits["val"] >= 15
    assert {row["domain"] for row in reference_rows("test")} == set(DOMAINS)
    assert [r["id"] for r in reference_rows("test")] == [r["id"] for r in rows if r["split"] == "test"]
    counts = write_reference(str(tmp_path))
    assert counts == {name: splits[name] for name in ("train", "val", "test")}
    train = pq.read_table(tmp_path / "sft_train.parquet").to_pylist()
    assert len(train) == splits["train"] and pq.read_table(tmp_path / "dpo_val.parquet").num_rows == splits["val"]
    test_prompts = {prompt_key(r["prompt"]) for r in pq.read_table(tmp_path / "test.parquet").to_pylist()}
    assert not test_prompts & {prompt_key(r["prompt"]) for r in train}
