"""Tailored generation for persona sources and the pairwise judge, end to end on the tiny models."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

from persona_ray.core import storage
from persona_ray.evaluation.generate import GenerateConfig, build_requests, run_generate
from persona_ray.evaluation.judge import Comparison, JudgeConfig, build_all_requests, run_judge, score
from persona_ray.evaluation.pairwise import parse_verdict, result_regex
from persona_ray.core.shards import ShardWriter, read_shards
from persona_ray.evaluation.generate import RESPONSE_SCHEMA

from tests.helpers import bundled_persona_rows

SYSTEM = "The user is a busy parent and prefers short, practical answers."


def _test_rows(n: int) -> list[dict]:
    """Test rows with gold personas and retrieved ones (as `persona-ray retrieve` writes them),
    from bundled data: these tests check the mechanics, not what the personas say."""
    bundled = bundled_persona_rows()[:n]
    return [{"pair_id": r["id"], "prompt": r["prompt"], "chosen": "c", "rejected": "r", "domain": "safety",
             "chosen_persona": r["chosen_persona"], "rejected_persona": r["rejected_persona"],
             "retr_chosen_persona": r["retr_chosen_persona"], "retr_rejected_persona": r["retr_rejected_persona"]}
            for r in bundled]


def _cfg(**kw) -> GenerateConfig:
    return GenerateConfig(**{"data": "d", "output": "o", "engine": {"model": "m"}, "model_id": "M", **kw})


# ------------------------------------------------------------------ requests (no Ray, no engine)

def test_requests_per_mode_and_source_with_quarantine():
    rows = _test_rows(2) + [{"pair_id": "bad-prompt", "prompt": " ", "chosen_persona": "The user is x.",
                             "rejected_persona": "The user is y."},
                            {"pair_id": "no-retr", "prompt": "What is a good first bike?",
                             "chosen_persona": "The user is x.", "rejected_persona": "The user is y."}]
    sources = ["gold-chosen", "retr-rejected", "system", "none"]
    requests, quarantine = build_requests(rows, _cfg(persona_sources=sources, system_persona=SYSTEM), [], set())
    by_key = {(r["row_id"], r["persona_source"]): r for r in requests}
    first = rows[0]
    assert by_key[(first["pair_id"], "gold-chosen")]["prompt"] == (
        f"Prompt: {first['prompt']}\nPersona: {' '.join(first['chosen_persona'].split())}\nResponse:")
    assert by_key[(first["pair_id"], "retr-rejected")]["persona"] == first["retr_rejected_persona"]
    assert by_key[(first["pair_id"], "system")]["persona"] == SYSTEM
    assert by_key[(first["pair_id"], "none")]["prompt"] == f"Prompt: {first['prompt']}\nResponse:"
    assert by_key[(first["pair_id"], "none")]["persona"] is None
    assert [(q["row_id"], q["persona_source"], q["reason"]) for q in quarantine] == [
        ("bad-prompt", "gold-chosen", "prompt: missing, empty or not a string"), ("bad-prompt", "retr-rejected", "prompt: missing, empty or not a string"),
        ("bad-prompt", "system", "prompt: missing, empty or not a string"), ("bad-prompt", "none", "prompt: missing, empty or not a string"),
        ("no-retr", "retr-rejected", "retr_rejected_persona: missing or empty")]
    assert len(requests) == 2 * 4 + 3

    # A model trained without personas gets the persona in plain words, never the Persona tag.
    plain, _ = build_requests(rows[:1], _cfg(mode="plain", persona_sources=["gold-chosen"]), [], set())
    assert "\nPersona:" not in plain[0]["prompt"] and plain[0]["prompt"].startswith("Prompt: ")
    assert "\n\nI am " in plain[0]["prompt"] or "\n\nMy " in plain[0]["prompt"]

    # Resume: keys already written are not asked again.
    done = {f"{first['pair_id']}\x1fgold-chosen"}
    again, _ = build_requests(rows[:1], _cfg(persona_sources=["gold-chosen", "none"]), [], done)
    assert [r["persona_source"] for r in again] == ["none"]


def test_fewshot_mode_shows_exemplars_and_its_no_persona_twin_drops_only_the_personas():
    rows = _test_rows(7)
    fewshot = [{**r, "chosen": f"Answer {i}."} for i, r in enumerate(rows[2:])]  # 5 rows, as the paper's
    requests, _ = build_requests(rows[:1], _cfg(mode="fewshot", fewshot_k=5, persona_sources=["gold-chosen", "none"]),
                                 fewshot, set())
    with_persona, without = (next(r["prompt"] for r in requests if r["persona_source"] == s) for s in ("gold-chosen", "none"))
    assert with_persona.count("Prompt: ") == without.count("Prompt: ") == 6  # all 5 exemplars, then the query
    assert all(f"Answer {i}." in with_persona and f"Answer {i}." in without for i in range(5))
    assert with_persona.count("\nPersona: ") == 6 and "Persona:" not in without
    # The twin is exactly the persona prompt with every Persona line taken out.
    assert without == "\n".join(line for line in with_persona.split("\n") if not line.startswith("Persona: "))
    assert without.endswith(f"Prompt: {rows[0]['prompt'].strip()}\nResponse:")


def _write_responses(folder, model_id, rows, sources, response="ok", error=""):
    writer = ShardWriter(storage.join(str(folder), model_id, "responses"), RESPONSE_SCHEMA, 100)
    writer.add(pa.Table.from_pylist([
        {"row_id": r["pair_id"], "persona_source": s, "persona": f"The user is given {s} for {r['pair_id']}."
         if s != "none" else None, "model_id": model_id, "prompt": r["prompt"],
         "input": "", "response": f"{response} {model_id}", "finish_reason": "stop", "error": error}
        for r in rows for s in sources], schema=RESPONSE_SCHEMA))
    writer.close()


def test_judge_requests_use_the_users_persona_and_report_missing_rows(tmp_path):
    rows = _test_rows(3)
    _write_responses(tmp_path, "PT", rows, ["gold-rejected", "retr-rejected"])
    _write_responses(tmp_path, "DPO", rows[:2], ["none"])
    cfg = JudgeConfig(responses=str(tmp_path), data="d", output="o",
                      comparisons=[Comparison(test="PT", base="DPO", base_source="none")])
    requests, skipped = build_all_requests(cfg, rows)
    assert len(requests) == 2 * 2 * 2 * 2  # 2 judged rows × 2 sources × 2 rubrics × 2 orders
    personalised = [r for r in requests if r["rubric"] == "personalization"]
    # The paper's choice (default): the persona the test model was given — the retrieved one for retr-*.
    for req in personalised:
        assert f"<persona>The user is given {req['persona_source']} for {req['row_id']}.</persona>" in req["prompt"]
    # judge_persona gold: the user's own (gold) rejected persona, for retr-rejected too.
    gold_cfg = cfg.model_copy(update={"judge_persona": "gold"})
    for req in [r for r in build_all_requests(gold_cfg, rows)[0] if r["rubric"] == "personalization"]:
        gold = next(r for r in rows if r["pair_id"] == req["row_id"])["rejected_persona"]
        assert f"<persona>{' '.join(gold.split())}</persona>" in req["prompt"]
    first = [r for r in requests if r["order"] == "base_first"][0]["prompt"]
    assert first.index("ok DPO") < first.index("ok PT")  # base is Response A in base_first
    assert sorted((s["persona_source"], s["row_id"], s["reason"]) for s in skipped) == [
        ("gold-rejected", rows[2]["pair_id"], "base response missing"),
        ("retr-rejected", rows[2]["pair_id"], "base response missing")]


def test_judge_output_must_be_local():
    with pytest.raises(ValueError, match="must be a local folder"):
        JudgeConfig(responses="r", data="d", output="s3://bucket/judged", comparisons=[Comparison(test="a", base="b")])


def test_scoring_keys_by_row_id_and_position_only_judge_ties():
    answered = [{"comparison": "PT vs DPO", "persona_source": "gold-chosen", "row_id": rid, "rubric": rubric,
                 "order": order, "verdict": "A"}
                for rid in ("r1", "r2") for rubric in ("quality", "personalization")
                for order in ("base_first", "test_first")]
    assert {s["outcome"] for s in score(answered)} == {"tie"}
    answered[0]["verdict"] = "B"  # r1 quality: test won base_first and test_first → test
    outcomes = {(s["row_id"], s["rubric"]): s["outcome"] for s in score(answered)}
    assert outcomes[("r1", "quality")] == "test" and outcomes[("r2", "quality")] == "tie"


# ------------------------------------------------------------------ end to end (Ray Data + vLLM)

@pytest.mark.slow
def test_generate_two_models_two_sources_then_guided_judge_and_report(ray_local, tiny_model, tmp_path):
    from persona_ray.testing.tiny_model import TinyModelSpec, build_tiny_model

    other_model = str(build_tiny_model(tmp_path / "models", TinyModelSpec(seed=1)))
    rows = _test_rows(6) + [{"pair_id": "zz-bad", "prompt": "", "chosen_persona": "The user is x.",
                             "rejected_persona": "The user is y.", "retr_chosen_persona": "The user is z.",
                             "retr_rejected_persona": "The user is w."}]
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "gen")
    common = dict(data=str(data), output=out, persona_sources=["gold-rejected", "retr-rejected"])
    sampling = {"max_tokens": 24, "stop": ["\nPrompt:"], "temperature": 0.0}
    pt = GenerateConfig(engine={"model": tiny_model, "sampling": sampling}, model_id="PT-DPO", mode="persona", **common)
    dpo = GenerateConfig(engine={"model": other_model, "sampling": sampling}, model_id="DPO", mode="plain", **common)
    assert run_generate(pt) == {"model_id": "PT-DPO", "rows": 7, "resumed": 0, "generated": 12, "quarantined": 2,
                                "output": f"{out}/PT-DPO/responses"}
    assert run_generate(dpo)["generated"] == 12
    assert run_generate(pt)["generated"] == 0  # rerun: everything was already written

    written = read_shards(f"{out}/PT-DPO/responses").to_pylist()
    assert sorted((w["row_id"], w["persona_source"]) for w in written) == sorted(
        (r["pair_id"], s) for r in rows[:6] for s in ("gold-rejected", "retr-rejected"))
    by_id = {r["pair_id"]: r for r in rows}
    for w in written:
        field = "rejected_persona" if w["persona_source"] == "gold-rejected" else "retr_rejected_persona"
        assert w["persona"] == by_id[w["row_id"]][field] and w["model_id"] == "PT-DPO"
        assert w["finish_reason"] in ("stop", "length") and not w["error"]
        assert w["input"].startswith(f"Prompt: {by_id[w['row_id']]['prompt']}\nPersona: ")
    plain = read_shards(f"{out}/DPO/responses").to_pylist()
    assert all("\nPersona:" not in w["input"] for w in plain)
    quarantined = [json.loads(x) for x in open(f"{out}/PT-DPO/quarantine.jsonl")]
    assert {(q["row_id"], q["reason"]) for q in quarantined} == {("zz-bad", "prompt: missing, empty or not a string")}

    judged = str(tmp_path / "judged")
    cfg = JudgeConfig(responses=out, data=str(data), output=judged,
                      comparisons=[Comparison(test="PT-DPO", base="DPO")], min_feedback_chars=5,
                      max_feedback_chars=40, n_boot=200,
                      judge={"model": tiny_model, "max_parse_retries": 0,
                             "sampling": {"max_tokens": 64, "stop": [], "temperature": 0.0}},
                      tracking={"backend": "mlflow", "uri": f"file:{tmp_path / 'mlruns'}", "run_name": "judge-test"})
    result = run_judge(cfg)
    summary = result["summary"]
    assert summary["requests"] == 6 * 2 * 2 * 2 and summary["unparseable_after_retries"] == 0
    assert summary["guided_decoding"] and summary["rows_not_judged"] == 2  # zz-bad, both sources

    verdicts = storage.read_parquet(os.path.join(judged, "verdicts.parquet")).to_pylist()
    assert len(verdicts) == 48 and all(v["verdict"] in ("A", "B") for v in verdicts)
    assert all(parse_verdict(v["answer"]) == v["verdict"] for v in verdicts)
    import re
    assert all(re.fullmatch(result_regex(5, 40), v["answer"]) for v in verdicts)

    # The aggregate is exactly what the both-orders rule gives on the stored verdicts.
    expected = score([{**v} for v in verdicts])
    assert len(result["results"]) == 2
    for res in result["results"]:
        mine = [e for e in expected if e["persona_source"] == res["persona_source"]]
        for prefix, rubric in (("p", "personalization"), ("q", "quality")):
            counted = [e["outcome"] for e in mine if e["rubric"] == rubric]
            assert [res[f"{prefix}_{o}"] for o in ("test", "base", "tie", "unparseable")] == [
                counted.count(o) for o in ("test", "base", "tie", "unparseable")]
        assert res["n_rows"] == 6
    report = open(result["report"]).read()
    assert "PT-DPO vs DPO" in report and "retr-rejected" in report and "ΔPQ" in report
    # The win rates and ΔPQ of each (comparison, source) are the tracked run's metrics.
    from tests.helpers import mlflow_runs

    (run,) = mlflow_runs(cfg.tracking.uri)
    assert run.info.run_name == "judge-test" and run.data.params["n_boot"] == "200"
    for res in result["results"]:
        logged = {k.rsplit("/", 1)[1]: v for k, v in run.data.metrics.items()
                  if k.startswith(f"PT-DPO vs DPO/{res['persona_source']}/")}
        # A rate with no decided verdicts (None) is left out rather than logged as a number.
        assert logged == {k: res[k] for k in ("p_win", "q_win", "delta_pq", "n_rows") if res[k] is not None}
        assert logged["n_rows"] == 6
    assert run.data.metrics["requests"] == 48
    saved = json.load(open(os.path.join(judged, "pairwise.json")))
    assert saved["results"] == result["results"] and len(saved["not_judged"]) == 2
    if any(r["delta_pq"] is not None for r in result["results"]):
        assert os.path.getsize(os.path.join(judged, "pairwise_delta_pq.png")) > 1000


def test_report_cli_renders_judged_results_with_the_delta_pq_plot(tmp_path):
    from click.testing import CliRunner

    from persona_ray.cli import app
    from persona_ray.evaluation.pairwise import aggregate

    scored = [{"comparison": "PT-DPO vs DPO", "persona_source": source, "row_id": f"r{i}", "rubric": rubric,
               "outcome": outcome}
              for source, outcomes in (("gold-chosen", ["test", "test", "base", "tie"]),
                                       ("gold-rejected", ["test", "base", "base", "tie"]))
              for i, outcome in enumerate(outcomes) for rubric in ("quality", "personalization")]
    results = aggregate(scored, n_boot=200)
    judged = tmp_path / "judged"
    storage.write_json({"summary": {"requests": 32}, "results": results}, str(judged / "pairwise.json"))
    out = tmp_path / "report"
    run = CliRunner().invoke(app, ["report", "--judged", str(judged), "--output", str(out)])
    assert run.exit_code == 0, run.output
    text = (out / "report.md").read_text()
    # gold-chosen: 2 wins / 1 loss → 66.7 % on both rubrics, ΔPQ 33.3; gold-rejected: 1 / 2 → 33.3 %, −33.3.
    assert "| PT-DPO vs DPO | gold-chosen | 4 | 66.7 [" in text and "(2/1/1)" in text
    assert "| PT-DPO vs DPO | gold-rejected | 4 | 33.3 [" in text and "| -33.3 [" in text
    assert (out / "pairwise_delta_pq.png").stat().st_size > 1000
    assert CliRunner().invoke(app, ["report", "--output", str(out)]).exit_code == 2
