"""PI quality without a judge (quality/persona_stats.py) and pi-eval with the judge off."""

from __future__ import annotations

import json

from persona_ray.inference.prompt import exemplar_personas
from persona_ray.quality.persona_stats import persona_statistics, reference_similarity
from tests.helpers import paper_rows, write_jsonl

HURRIED = "The user is a hurried cook on a weeknight and prefers one short tip they can use at once."
CURIOUS = "The user is a curious home cook and prefers the food chemistry behind each step explained in full."


def test_statistics_count_invalid_same_sided_copied_and_repeated_personas():
    copied = exemplar_personas()[0]
    rows = [
        {"pair_id": "a", "chosen_persona": HURRIED, "rejected_persona": CURIOUS},
        {"pair_id": "b", "chosen_persona": HURRIED, "rejected_persona": HURRIED.replace("one short", "a short")},
        {"pair_id": "c", "chosen_persona": copied, "rejected_persona": None},
        {"pair_id": "d", "chosen_persona": "The user is Hispanic and prefers short answers.", "rejected_persona": ""},
    ]
    stats = persona_statistics(rows)
    assert stats["pairs"] == 4 and stats["personas"] == 8
    assert stats["valid_rate"] == 5 / 8, "None, '' and a protected attribute are not valid personas"
    assert stats["pairs_with_two_valid"] == 2 and stats["same_both_sides"] == 0.5, "pair b says one thing twice"
    assert stats["exemplar_copies"] == 0.2
    assert stats["distinct_rate"] == 4 / 5, "HURRIED twice (a and b) is one distinct persona"


def test_reference_similarity_ranks_the_reference_wording_above_other_personas_with_a_ci():
    gold, retrieved = paper_rows(""), paper_rows("retr_")
    swapped = [{**r, "chosen_persona": r["rejected_persona"], "rejected_persona": r["chosen_persona"]} for r in gold]
    result = reference_similarity({"gold": gold, "retrieved": retrieved, "swapped": swapped}, gold, n_boot=200)
    models = result["models"]
    assert models["gold"]["mean"] > 0.99 and models["gold"]["n_pairs"] == 12
    assert models["retrieved"]["lo"] <= models["retrieved"]["mean"] <= models["retrieved"]["hi"] < 0.99
    difference = result["differences"]["gold - retrieved"]
    assert difference["n_pairs"] == 12 and difference["lo"] > 0, "the CI excludes 0"
    assert result["differences"]["gold - swapped"]["lo"] > 0, "the other side's persona is not this side's"
    missing = reference_similarity({"none": [{**gold[0], "chosen_persona": None, "rejected_persona": None}]}, gold)
    assert missing["models"]["none"]["mean"] == 0.0, "a missing persona explains nothing"


def test_pi_eval_without_a_judge_writes_the_statistics_and_starts_nothing(tmp_path):
    import ray

    from persona_ray.quality.pi_eval import PIEvalConfig, run_pi_eval

    data = {"gold": write_jsonl(tmp_path / "gold.jsonl", paper_rows("")),
            "retrieved": write_jsonl(tmp_path / "retr.jsonl", paper_rows("retr_"))}
    reference = write_jsonl(tmp_path / "reference.jsonl",
                            [{"id": r["pair_id"], "chosen_persona": r["chosen_persona"],
                              "rejected_persona": r["rejected_persona"]} for r in paper_rows("")])
    result = run_pi_eval(PIEvalConfig(data=data, output=str(tmp_path / "eval"), pi_accuracy=False,
                                      persona_preference=False, reference=reference, saliency_min_count=2,
                                      judge={"model": "no-such-model", "backend": "vllm"}))
    assert not ray.is_initialized(), "no judge, so no Ray and no engine"
    assert result["summary"]["requests"] == 0 and result["accuracy"] == []
    written = json.loads((tmp_path / "eval" / "persona_stats.json").read_text())
    assert set(written["models"]) == {"gold", "retrieved"} and written["models"]["gold"]["valid_rate"] == 1.0
    assert written["reference_similarity"]["differences"]["gold - retrieved"]["lo"] > 0
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "Similarity to the reference personas" in report and "same persona both sides" in report
