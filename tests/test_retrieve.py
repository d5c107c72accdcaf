"""ColBERT persona retriever: real colbert-ai (PLAID) over a MiniLM checkpoint built offline."""

from __future__ import annotations

import json
import os
import re
import socket

import numpy as np
import pyarrow as pa
import pyarrow.parquet  # noqa: F401  (pa.parquet)
import pytest

from persona_ray.core import storage
from persona_ray.retrieval import index as index_module
from persona_ray.retrieval.index import IndexConfig, run_index
from persona_ray.retrieval.rows import ROW_COLUMNS, write_index_rows
from persona_ray.retrieval.recall import corpus_rows, recall_at, reword
from persona_ray.retrieval.batch import RetrieveConfig, run_retrieve
from persona_ray.retrieval.search import MAX_QUERY_CHARS, PersonaRetriever, QueryError

from tests.helpers import SAMPLE_PAIRS, bundled_persona_rows, read_jsonl, shared_data

pytestmark = pytest.mark.slow


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def big_index(tmp_path_factory, ray_local):
    """~2,000 distinct real texts: 499 BeaverTails prompts, 60 sample prompts, personas, responses.
    Recall at this size on messy real text is the point, and the bundled data holds only ~1,100
    distinct texts (mostly clauses of a few dozen answers): skipped where the real file is absent."""
    real = read_jsonl(shared_data())
    sample = read_jsonl(SAMPLE_PAIRS)
    extra = [r["prompt"] for r in sample] + [r[f] for r in sample for f in ("chosen", "rejected")]
    extra += [r[f] for r in real for f in ("pt_dpo_response", "dpo_response")]
    rows = corpus_rows(real, extra, size=2000)
    folder = tmp_path_factory.mktemp("big")
    manifest = run_index(IndexConfig(data=_write_jsonl(folder / "rows.jsonl", rows), output=str(folder / "index")))
    return rows, manifest, PersonaRetriever.load(str(folder / "index"))


@pytest.fixture(scope="module")
def bundled_index(tmp_path_factory, ray_local):
    """The 60 bundled prompts with personas: a small index that every clone can build, encoded by
    two Ray actors in 4 shards of 16 prompts, PLAID built in 3 chunks of 25, 25 and 10 prompts."""
    rows = [{"pair_id": r["id"], **{k: v for k, v in r.items() if k != "id"}} for r in bundled_persona_rows()]
    folder = tmp_path_factory.mktemp("bundled")
    with pytest.MonkeyPatch.context() as patch:  # both actors up before the first batch: both encode
        patch.setattr(ray_local.data.DataContext.get_current(), "wait_for_min_actors_s", 300)
        patch.setattr(index_module, "PLAID_CHUNK_PASSAGES", 25)
        manifest = run_index(IndexConfig(data=_write_jsonl(folder / "rows.jsonl", rows), output=str(folder / "index"),
                                         encode_workers=2, encode_batch=16))
    assert not os.path.exists(folder / "index" / "_staging")  # the shards are gone once PLAID is built
    assert sorted(p.name for p in (folder / "index" / "colbert").glob("*.codes.pt")) == [f"{i}.codes.pt" for i in range(3)]
    return rows, manifest, PersonaRetriever.load(str(folder / "index"))


@pytest.fixture(scope="module", params=["bundled_index", "big_index"])
def any_index(request):
    """Query checks run on the bundled index everywhere and on the real one where it exists."""
    return request.getfixturevalue(request.param)


def test_recall_on_reworded_queries_over_2000_prompts(big_index):
    rows, manifest, retriever = big_index
    assert manifest["rows"] == len(rows) == 2000 and len(retriever) == 2000
    # Every 4th row: 500 queries over prompts, personas and response sentences alike.
    _assert_recall(retriever, rows[::4])


def test_recall_on_reworded_bundled_prompts(bundled_index):
    """A sanity check of retrieval quality that runs without the real data (60 prompts only)."""
    rows, manifest, retriever = bundled_index
    assert manifest["rows"] == len(rows) == len(retriever) == 60
    _assert_recall(retriever, rows)


def test_actor_pool_index_finds_what_the_in_process_index_finds(bundled_index, tmp_path):
    """Encoding on two Ray actors, then PLAID from their shards, is the index colbert builds alone."""
    rows, manifest, pooled = bundled_index
    encode = manifest["encode"]
    assert (encode["mode"], encode["workers"], encode["shards"], encode["passages"]) == ("ray-actors", 2, 4, 60)
    # Two worker processes wrote the shards, neither of them this one.
    assert len(encode["processes"]) == 2 and f"{socket.gethostname()}:{os.getpid()}" not in encode["processes"]

    alone = run_index(IndexConfig(data=_write_jsonl(tmp_path / "rows.jsonl", rows), output=str(tmp_path / "index"),
                                  encode_workers=0))
    assert alone["encode"] == {"mode": "in-process", "workers": 0}
    assert alone["fingerprint"] == manifest["fingerprint"]  # how it was encoded is not what it indexes
    assert [p.name for p in (tmp_path / "index" / "colbert").glob("*.codes.pt")] == ["0.codes.pt"]  # colbert's own
    in_process = PersonaRetriever.load(str(tmp_path / "index"))
    queries = [r["prompt"] for r in rows] + [reword(r["prompt"]) for r in rows]
    tops = [[[h["row_id"] for h in retriever.search(q, k=5)] for retriever in (pooled, in_process)] for q in queries]
    assert all(a[0] == b[0] for a, b in tops)
    # Same top-5 lists (all 120 here); a near tie may flip on another CPU's float rounding.
    same = sum(a == b for a, b in tops)
    print(f"identical top-5 lists: {same} of {len(tops)}")
    assert same >= 0.95 * len(tops)


def test_embedding_shards_give_each_passage_its_vectors_and_refuse_gaps(tmp_path):
    """colbert asks for vectors by passage id, in chunks and as a scattered k-means sample."""
    from persona_ray.retrieval.encode import ShardedEmbeddings, shard_name, write_shard

    doclens = np.random.default_rng(0).integers(1, 6, size=10).astype(np.int32)
    vectors = [np.full((n, 4), pid, np.float16) for pid, n in enumerate(doclens)]  # passage p's vectors are p
    for first, count in ((0, 4), (4, 3), (7, 3)):
        write_shard(str(tmp_path), first, np.concatenate(vectors[first:first + count]),
                    doclens[first:first + count], "host:1")
    pids = [1, 3, 4, 9]
    embs, lens = ShardedEmbeddings(str(tmp_path), 10).encode_passages(pids)
    assert lens == [int(doclens[p]) for p in pids] and str(embs.dtype) == "torch.float32"
    assert embs[:, 0].tolist() == [float(p) for p in pids for _ in range(doclens[p])]
    with pytest.raises(ValueError, match="cover 10 passages, the collection has 11"):
        ShardedEmbeddings(str(tmp_path), 11)
    os.remove(tmp_path / shard_name(4, 3))
    with pytest.raises(ValueError, match="do not cover passages 4..6"):
        ShardedEmbeddings(str(tmp_path), 10)


def test_passage_blocks_are_consecutive_passages_in_order_when_read_blocks_finish_out_of_order(
        tmp_path, ray_local, monkeypatch):
    """Each encode batch is one shard, so a batch must hold consecutive passages. Ray Data cuts the
    read into blocks of its own; here the first of them is made to finish last, which (without
    preserve_order) let the repartition fill 10 of 286 blocks from two places far apart."""
    import time

    from persona_ray.retrieval import encode

    passages, batch = 2000, 7
    source = tmp_path / "rows.parquet"
    pa.parquet.write_table(pa.table({"prompt": [f"prompt {i}" for i in range(passages)]}), source)
    original = encode._passage_batch

    def first_block_last(block, column):
        out = original(block, column)
        if 0 in out["pid"]:
            time.sleep(3)
        return out

    monkeypatch.setattr(encode, "_passage_batch", first_block_last)
    blocks = encode.passage_blocks(str(source), "prompt", batch)
    pids = [ray_local.get(ref)["pid"].to_numpy() for ref in blocks.get_internal_block_refs()]
    # The read was cut into blocks mapped by tasks of their own, so they could finish out of order.
    assert int(re.search(r"MapBatches\(first_block_last\): (\d+) tasks", blocks.stats()).group(1)) > 1
    apart = [p.tolist() for p in pids if not (np.diff(p) == 1).all()]
    assert not apart, apart
    assert [len(p) for p in pids] == [batch] * (passages // batch) + [passages % batch]
    assert np.concatenate(pids).tolist() == list(range(passages))


def _assert_recall(retriever, rows: list[dict]) -> None:
    """Each row's prompt, reworded, finds that row: recall@10 >= 0.95 and recall@1 >= 0.8."""
    targets = [(reword(r["prompt"]), r["pair_id"]) for r in rows]
    assert all(q != r["prompt"] for (q, _), r in zip(targets, rows))
    recall = recall_at(retriever.search, targets, ks=(1, 10))
    print(f"recall@1={recall[1]:.3f} recall@10={recall[10]:.3f} on {len(targets)} reworded queries")
    assert recall[10] >= 0.95
    assert recall[1] >= 0.8


def test_hits_are_ranked_rows_with_personas(any_index):
    rows, _, retriever = any_index
    by_id = {r["pair_id"]: r for r in rows}
    hits = retriever.search(rows[7]["prompt"], k=5)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert hits[0]["row_id"] == rows[7]["pair_id"]  # the exact prompt finds itself
    for hit in hits:
        source = by_id[hit["row_id"]]
        assert (hit["prompt"], hit["chosen_persona"], hit["rejected_persona"]) == (
            source["prompt"], source["chosen_persona"], source["rejected_persona"])


@pytest.mark.parametrize("query, reason", [
    ("", "query is empty"),
    ("   \n\t ", "query is empty"),
    ("x" * (MAX_QUERY_CHARS + 1), f"limit is {MAX_QUERY_CHARS}"),
    (123, "must be a string, got int"),
    (None, "must be a string, got NoneType"),
    (b"bytes", "must be a string, got bytes"),
    (["a list"], "must be a string, got list"),
    ("nul\x00inside", "NUL"),
])
def test_bad_queries_get_a_clear_error(any_index, query, reason):
    with pytest.raises(QueryError, match=reason):
        any_index[2].search(query, k=3)


def test_bad_k_is_an_error(any_index):
    with pytest.raises(QueryError, match="k must be a positive integer"):
        any_index[2].search("how do I stay safe online", k=0)


def _augmented_folder(tmp_path):
    """An augmented folder as `persona-ray augment` writes it (test split included), from the 60
    bundled rows: every row's (chosen, rejected) personas are its own, so they identify it."""
    rows = bundled_persona_rows()
    splits = {"fewshot": rows[:5], "sft_train": rows[5:40], "sft_val": rows[40:45], "test": rows[45:60]}
    splits["dpo_train"], splits["dpo_val"] = splits["sft_train"], splits["sft_val"]  # shared pools
    folder = tmp_path / "augmented"
    folder.mkdir()
    for name, rows in splits.items():
        table = [{"pair_id": r["id"], "prompt": r["prompt"], "chosen": "c", "rejected": "r", "domain": "safety",
                  "chosen_persona": r["chosen_persona"], "rejected_persona": r["rejected_persona"]} for r in rows]
        storage.write_parquet(pa.Table.from_pylist(table), str(folder / f"{name}.parquet"))
    return str(folder), splits


def test_s3_round_trip_idempotent_rebuild_and_no_test_rows(tmp_path, s3_bucket, ray_local, monkeypatch):
    data, splits = _augmented_folder(tmp_path)
    uri = f"s3://{s3_bucket}/indexes/beavertails"
    first = run_index(IndexConfig(data=data, output=uri))
    assert first["rebuilt"] and first["rows"] == 45  # 5 + 35 + 5, shared pools counted once
    assert storage.exists(f"{uri}/manifest.json") and storage.list_files(f"{uri}/colbert")
    # The actors wrote their embedding shards to S3 beside the index; they are gone now.
    assert first["encode"]["mode"] == "ray-actors" and not storage.exists(f"{uri}/_staging")
    again = run_index(IndexConfig(data=data, output=uri))
    assert not again["rebuilt"] and again["fingerprint"] == first["fingerprint"]

    test_ids = {r["id"] for r in splits["test"]}
    indexed = storage.read_parquet(f"{uri}/rows.parquet").column("row_id").to_pylist()
    assert len(indexed) == len(set(indexed)) == 45 and not test_ids & set(indexed)

    # Replicas starting together on one node: one complete local copy, no scratch folders left.
    from concurrent.futures import ThreadPoolExecutor

    from persona_ray.retrieval.search import local_copy

    monkeypatch.setenv("PERSONA_RAY_CACHE", str(tmp_path / "cache"))  # an empty cache: really download
    with ThreadPoolExecutor(3) as pool:
        copies = set(pool.map(local_copy, [uri] * 3))
    (copy,) = copies
    assert json.load(open(os.path.join(copy, "manifest.json")))["fingerprint"] == first["fingerprint"]
    assert copy.startswith(str(tmp_path / "cache"))
    assert not [p for p in os.listdir(os.path.dirname(copy)) if p.startswith(".")]
    retriever = PersonaRetriever.load(uri)  # from the cached copy
    train = splits["sft_train"][3]
    assert retriever.search(train["prompt"], k=1)[0]["row_id"] == train["id"]
    for row in splits["test"]:  # a test prompt verbatim can only retrieve training rows
        assert all(hit["row_id"] not in test_ids for hit in retriever.search(row["prompt"], k=10))

    # Batch retrieval for the whole test split as a Ray Data step, one bad row quarantined.
    bad = {"pair_id": "bad-1", "prompt": "   ", "chosen_persona": "x", "rejected_persona": "y"}
    test_file = _write_jsonl(tmp_path / "test.jsonl",
                             [{"pair_id": r["id"], "prompt": r["prompt"]} for r in splits["test"]] + [bad])
    out = f"s3://{s3_bucket}/retrieved"
    summary = run_retrieve(RetrieveConfig(index=uri, data=test_file, output=out))
    assert summary == {"rows": 16, "retrieved": 15, "quarantined": 1, "output": out}
    got = storage.read_parquet(f"{out}/test.parquet").to_pylist()
    assert [g["pair_id"] for g in got] == [r["id"] for r in splits["test"]]
    by_id = {r["id"]: r for r in bundled_persona_rows()}
    for g in got:
        assert g["retr_row_id"] not in test_ids
        assert g["retr_chosen_persona"] == by_id[g["retr_row_id"]]["chosen_persona"]
        assert g["retr_rejected_persona"] == by_id[g["retr_row_id"]]["rejected_persona"]
        assert g["retr_chosen_persona"] == retriever.search(g["prompt"], k=1)[0]["chosen_persona"]
    quarantined = [json.loads(x) for x in storage.read_bytes(f"{out}/test.quarantine.jsonl").decode().splitlines()]
    assert quarantined == [{"row": 15, "row_id": "bad-1", "reason": "_query: query is empty"}] or \
        quarantined[0]["row_id"] == "bad-1" and "query is empty" in quarantined[0]["reason"]


def test_index_config_refuses_the_test_split():
    with pytest.raises(ValueError, match="test split must never be indexed"):
        IndexConfig(data="d", output="o", splits=["sft_train", "test"])


def _index_rows(data, tmp_path, splits=("sft_train", "dpo_train")):
    import hashlib

    folder = tmp_path / "scratch"
    folder.mkdir()
    digest = hashlib.sha256()
    rows = write_index_rows(str(data), list(splits), str(folder), digest)
    kept = pa.parquet.read_table(rows.rows_path).to_pylist()
    quarantine = [json.loads(x) for x in open(rows.quarantine_path)]
    return rows, kept, sorted(quarantine, key=lambda q: int(q["where"].rsplit(":", 1)[1])), digest.hexdigest()


def test_unusable_rows_are_quarantined_with_where_field_and_reason(tmp_path, ray_local):
    good = {"prompt": "p", "chosen_persona": "c", "rejected_persona": "r"}
    lines = [json.dumps(r) for r in [
        {"pair_id": "a", **good, "split": "train"},
        {"pair_id": "b", **good, "prompt": "", "split": "train"},
        {"pair_id": "c", **good, "chosen_persona": None, "split": "train"},
        {"id": 7, **good, "split": "train"},
        {"pair_id": "t", **good, "split": "test"},
    ]] + ["{not json", "[1, 2]", json.dumps({"pair_id": "a", **good, "prompt": "other", "split": "dpo_train"}),
          json.dumps({"id": "0-first", **good, "domain": "hhh"})]
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(lines) + "\n")
    rows, kept, quarantine, _ = _index_rows(data, tmp_path)
    # Sorted by id; of the two rows with id "a" the first in the file is kept; no split: "train".
    assert [(r["row_id"], r["prompt"], r["split"], r["domain"]) for r in kept] == [
        ("0-first", "p", "train", "hhh"), ("a", "p", "train", "unknown")]
    assert [(q["where"], q["row_id"], q["reason"]) for q in quarantine] == [
        ("rows.jsonl:2", "b", "prompt: missing, empty or not a string"),
        ("rows.jsonl:3", "c", "chosen_persona: missing, empty or not a string"),
        ("rows.jsonl:4", "7", "pair_id/id: missing or not a string"),
        ("rows.jsonl:5", "t", "split: test rows are never indexed"),
        ("rows.jsonl:6", None, "not JSON (Expecting property name enclosed in double quotes)"),
        ("rows.jsonl:7", None, "not a JSON object"),
    ]
    assert (rows.rows, rows.quarantined, rows.splits) == (2, 6, ["train"])


def test_index_rows_of_a_folder_keep_the_first_split_and_hash_like_a_list(tmp_path, ray_local):
    """SFT and DPO splits share rows: each id once, from the first configured split, in id order,
    over many Ray blocks; the digest is the rows' JSON lines in that order."""
    import hashlib

    folder = tmp_path / "augmented"
    folder.mkdir()
    shared = [{"pair_id": f"p{i:04d}", "prompt": f"prompt {i}", "chosen_persona": "c", "rejected_persona": "r",
               "domain": "hhh"} for i in range(1500)]
    pa.parquet.write_table(pa.Table.from_pylist(shared[::-1]), folder / "dpo_train.parquet", row_group_size=100)
    extra = [{**r, "pair_id": f"s{i}"} for i, r in enumerate(shared[:3])]
    pa.parquet.write_table(pa.Table.from_pylist(shared[700:] + extra + [{**shared[0], "prompt": " "}]),
                           folder / "sft_train.parquet", row_group_size=100)
    rows, kept, quarantine, digest = _index_rows(folder, tmp_path, splits=("dpo_train", "sft_train"))
    assert [r["row_id"] for r in kept] == sorted([r["pair_id"] for r in shared] + ["s0", "s1", "s2"])
    assert {r["split"] for r in kept if r["row_id"].startswith("p")} == {"dpo_train"}
    assert {r["split"] for r in kept if r["row_id"].startswith("s")} == {"sft_train"}
    assert quarantine == [{"where": "sft_train.parquet:804", "row_id": "p0000",
                           "reason": "prompt: missing, empty or not a string"}]
    expected = hashlib.sha256()
    for row in kept:
        expected.update(json.dumps([row[c] for c in ROW_COLUMNS]).encode() + b"\n")
    assert digest == expected.hexdigest() and rows.splits == ["dpo_train", "sft_train"]


def test_an_input_with_no_indexable_row_is_an_error(tmp_path, ray_local):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"pair_id": "x", "prompt": ""}) + "\n")
    with pytest.raises(ValueError, match="no indexable training rows \\(1 quarantined\\)"):
        run_index(IndexConfig(data=str(data), output=str(tmp_path / "index")))


def test_code_assignment_in_small_batches_gives_colbert_codes_with_bounded_scores(monkeypatch):
    """The PLAID build's code assignment, patched to score at most CODES_SCORES_BYTES at a time,
    gives each token vector its nearest centroid (colbert's argmax), here over many batches."""
    import torch

    from persona_ray.retrieval import colbert_compat

    colbert_compat.apply()
    from colbert.indexing.codecs.residual import ResidualCodec

    generator = torch.Generator().manual_seed(0)
    codec = ResidualCodec.__new__(ResidualCodec)  # only what compress_into_codes reads
    codec.use_gpu, codec.centroids = False, torch.randn(300, colbert_compat.DIM, generator=generator)
    embs = torch.randn(5000, colbert_compat.DIM, generator=generator)
    expected = (codec.centroids @ embs.T).max(dim=0).indices

    monkeypatch.setattr(colbert_compat, "CODES_SCORES_BYTES", 4 * 300 * 128)  # 128 tokens a batch: 40 batches
    calls = []
    real_matmul = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: calls.append(tuple(b.shape)) or real_matmul(a, b))
    codes = codec.compress_into_codes(embs, out_device="cpu")

    assert torch.equal(codes, expected)
    assert len(calls) == 40 and max(shape[1] for shape in calls) == 128
