"""What persona inference still has to do (grouped by pair id), and committed shards counted from
their footers: no model, no Ray."""

from __future__ import annotations

import pyarrow as pa

from persona_ray.core.schema import QUARANTINE_SCHEMA
from persona_ray.core.shards import ShardWriter, committed_rows, shard_files
from persona_ray.inference.todo import plan_group


def _pair(content_key: int, prompt: str = "Q?", raw: str = "{}") -> dict:
    return {"pair_id": "p1", "kind": "pair", "prompt": prompt, "chosen": "A.", "rejected": "B.", "domain": "d",
            "content_key": content_key, "reason": "", "raw": raw, "side": None}


def _done(side: str) -> dict:
    return {"pair_id": "p1", "kind": "done", "side": side}


def test_a_pair_with_nothing_written_needs_both_sides():
    [todo] = plan_group([_pair(7)])
    assert todo["kind"] == "todo" and todo["sides"] == "chosen,rejected" and todo["prompt"] == "Q?"


def test_written_sides_are_skipped_and_a_finished_pair_still_counts():
    assert [r["sides"] for r in plan_group([_done("chosen"), _pair(7)])] == ["rejected"]
    assert [(r["kind"], r["sides"]) for r in plan_group([_pair(7), _done("rejected"), _done("chosen")])] == [
        ("todo", "")]


def test_repeated_ids_keep_the_smallest_content_hash_whatever_the_order():
    rows = [_pair(9, prompt="second", raw='{"n": 2}'), _pair(9, prompt="second", raw='{"n": 3}'),
            _pair(3, prompt="first", raw='{"n": 1}')]
    for order in (rows, rows[::-1]):
        out = plan_group(order)
        [todo] = [r for r in out if r["kind"] == "todo"]
        quarantined = sorted((r["raw"], r["reason"]) for r in out if r["kind"] == "quarantine")
        assert todo["prompt"] == "first"
        assert quarantined == [('{"n": 2}', "field 'pair_id': 'p1' used by rows with different content (kept one)"),
                               ('{"n": 3}', "field 'pair_id': 'p1' used by rows with different content (kept one)")]
    same = plan_group([_pair(3, raw="a"), _pair(3, raw="b")])
    assert [r["reason"] for r in same if r["kind"] == "quarantine"] == ["field 'pair_id': exact duplicate of pair 'p1'"]


def test_a_run_leaves_pairs_outside_its_share_and_pairs_another_run_wrote_in_full():
    from persona_ray.inference.input_pairs import in_share

    ids = [f"pair-{i}" for i in range(4000)]
    picked = [i for i in ids if in_share(i, 0.1)]
    assert 0.08 < len(picked) / len(ids) < 0.12 and picked == [i for i in ids if in_share(i, 0.1)]  # same every run
    assert set(picked) <= {i for i in ids if in_share(i, 0.25)}  # a bigger share keeps the smaller one's pairs
    inside, outside = picked[0], next(i for i in ids if i not in picked)
    assert plan_group([{**_pair(7), "pair_id": inside}], 0.1)[0]["kind"] == "todo"
    assert plan_group([{**_pair(7), "pair_id": outside}], 0.1) == [{"kind": "left", "pair_id": outside}]
    # a teacher's run wrote both sides: the student leaves the pair; one side: it writes the other
    elsewhere = [{**_done(side), "kind": "elsewhere"} for side in ("chosen", "rejected")]
    assert plan_group([_pair(7), *elsewhere]) == [{"kind": "left", "pair_id": "p1"}]
    assert [r["sides"] for r in plan_group([_pair(7), elsewhere[0]])] == ["rejected"]
    bad = {**_pair(0, raw="broken"), "kind": "bad", "reason": "field 'rejected': missing"}
    assert [r["kind"] for r in plan_group([bad, _pair(7), *elsewhere])] == ["quarantine", "left"]


def test_bad_rows_are_quarantined_and_personas_of_unknown_pairs_left_alone():
    bad = {**_pair(0, raw="broken"), "kind": "bad", "reason": "field 'rejected': missing"}
    assert plan_group([bad]) == [{"kind": "quarantine", "pair_id": "p1", "reason": "field 'rejected': missing",
                                  "raw": "broken"}]
    assert plan_group([_done("chosen")]) == []


def test_committed_rows_come_from_footers_and_unreadable_shards_are_removed(tmp_path):
    writer = ShardWriter(str(tmp_path), QUARANTINE_SCHEMA, shard_size=3, commit_every_s=None)
    writer.add(pa.table({"row_id": list("abcde"), "reason": ["r"] * 5, "raw": ["x"] * 5}))
    writer.close()
    first, second = shard_files(str(tmp_path))
    data = open(second, "rb").read()
    with open(second, "wb") as handle:
        handle.write(data[: len(data) // 2])  # a shard cut short
    (tmp_path / ".part-left-over.tmp").write_bytes(b"partial")
    assert committed_rows(str(tmp_path)) == 3
    assert shard_files(str(tmp_path)) == [first] and not (tmp_path / ".part-left-over.tmp").exists()
    assert committed_rows(str(tmp_path / "absent")) == 0
