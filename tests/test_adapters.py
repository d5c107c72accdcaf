"""Adapters from public dataset schemas to the pair contract, on fixture files in each schema."""

from __future__ import annotations


import pytest

from persona_ray.inference.adapters import adapt_row, detect_format, split_dialogue
from persona_ray.core.schema import ContractError, check_pair
from tests.helpers import SAMPLE_PAIRS, read_jsonl

from tests.helpers import FIXTURES


@pytest.mark.parametrize(
    "name, fmt, domain",
    [("pku_saferlhf", "pku_saferlhf", "safety_qa"), ("hh_rlhf", "hh_rlhf", "dialogue"), ("shp", "shp", "reddit"),
     ("flat", "flat", "safety_qa")],
)
def test_each_fixture_adapts_to_valid_pairs(name, fmt, domain):
    rows = read_jsonl(FIXTURES / f"{name}.jsonl")
    assert len(rows) == 5
    pairs = [check_pair(adapt_row(row, "auto")) for row in rows]
    assert all(detect_format(row) == fmt for row in rows)
    assert all(p.domain == domain and p.source == fmt for p in pairs)
    assert len({p.pair_id for p in pairs}) == 5


def test_pku_better_response_id_picks_chosen():
    for row in read_jsonl(FIXTURES / "pku_saferlhf.jsonl"):
        pair = adapt_row(row)
        better = int(row["better_response_id"])
        assert pair["chosen"] == row[f"response_{better}"]
        assert pair["rejected"] == row[f"response_{1 - better}"]


def test_shp_label_one_means_a_preferred():
    for row in read_jsonl(FIXTURES / "shp.jsonl"):
        pair = adapt_row(row)
        a, b = row["human_ref_A"], row["human_ref_B"]
        assert (pair["chosen"], pair["rejected"]) == ((a, b) if row["labels"] == 1 else (b, a))
        assert pair["prompt"] == row["history"]
        assert pair["pair_id"] == f"{row['post_id']}-{row['c_root_id_A']}-{row['c_root_id_B']}"


def test_hh_dialogue_split_keeps_earlier_turns_in_prompt():
    for row in read_jsonl(FIXTURES / "hh_rlhf.jsonl"):
        pair = adapt_row(row)
        assert pair["prompt"].startswith("Human: ")
        assert not pair["prompt"].endswith("Assistant:")
        assert row["chosen"].endswith(pair["chosen"]) and row["rejected"].endswith(pair["rejected"])
        assert "Assistant:" not in pair["chosen"]
    multi = [adapt_row(r) for r in read_jsonl(FIXTURES / "hh_rlhf.jsonl") if r["chosen"].count("Human:") > 1]
    assert len(multi) == 2 and all("\n\nAssistant: " in p["prompt"] for p in multi)


def test_hh_split_exact_strings():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: Why did the chicken..."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: No."
    assert split_dialogue(chosen, rejected) == (
        "Human: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke", "Why did the chicken...", "No.")
    with pytest.raises(ContractError, match="share no turn"):
        split_dialogue("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: c\n\nAssistant: d")


def test_flat_rows_without_id_get_stable_content_ids():
    row = read_jsonl(FIXTURES / "flat.jsonl")[0]
    first, second = adapt_row(dict(row), source="demo"), adapt_row(dict(row), source="demo")
    assert first["pair_id"] == second["pair_id"] and first["pair_id"].startswith("demo-")
    changed = adapt_row({**row, "chosen": row["chosen"] + " More."}, source="demo")
    assert changed["pair_id"] != first["pair_id"]


def test_sample_data_is_valid_and_covers_four_domains():
    pairs = [check_pair(adapt_row(row)) for row in read_jsonl(SAMPLE_PAIRS)]
    assert len(pairs) == 60
    assert {p.domain for p in pairs} == {"safety_qa", "dialogue", "reddit", "mnemonic"}


@pytest.mark.parametrize(
    "row, field, reason",
    [
        ({"question": "q", "answer": "a"}, "<row>", "unknown schema"),
        ({"prompt": "q", "chosen": "a"}, "rejected", "missing"),
        ({"prompt": "q", "chosen": "a", "rejected": None}, "rejected", "missing"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "chosen", "empty"),
        ({"prompt": 7, "chosen": "a", "rejected": "b"}, "prompt", "expected text, got int"),
        ({"prompt": "q", "chosen": "same", "rejected": " same "}, "rejected", "identical to chosen"),
        ({"prompt": "q", "response_0": "a", "response_1": "b", "better_response_id": 2}, "better_response_id",
         "expected 0 or 1"),
        ({"history": "q", "human_ref_A": "a", "human_ref_B": 3, "labels": 1}, "human_ref_B", "expected text"),
    ],
)
def test_contract_errors_name_the_field(row, field, reason):
    with pytest.raises(ContractError) as info:
        check_pair(adapt_row(row))
    assert info.value.field == field
    assert reason in str(info.value) and f"'{field}'" in str(info.value)
