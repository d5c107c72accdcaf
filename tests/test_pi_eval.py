"""PI accuracy, persona preference and diagnostics end to end: tiny judge on Ray Data + vLLM."""

from __future__ import annotations

import pytest

from persona_ray.quality.pi_eval import PIEvalConfig, run_pi_eval
from tests.helpers import paper_rows, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_pi_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pi-data")
    return {"gold": write_jsonl(folder / "gold.jsonl", paper_rows("")),
            "retrieved": write_jsonl(folder / "retr.jsonl", paper_rows("retr_"))}


def test_guided_judge_gives_every_verdict(ray_local, two_pi_models, tmp_path):
    cfg = PIEvalConfig(data=two_pi_models, output=str(tmp_path), saliency_min_count=2,
                       judge={"model": "tiny", "backend": "vllm", "guided_decoding": True, "vllm": {"batch_size": 32}})
    result = run_pi_eval(cfg)
    summary = result["summary"]
    # 2 models x 12 pairs x 2 personas x 2 orders, plus 2 x 12 x 2 preference requests
    assert summary["requests"] == 2 * 12 * 2 * 2 + 2 * 12 * 2
    assert summary["unparseable_after_retries"] == 0 and summary["retried"] == 0
    overall = {(r["model"], r["side"]): r for r in result["accuracy"] if r["domain"] == "all"}
    assert set(overall) == {(m, s) for m in ("gold", "retrieved") for s in ("chosen", "rejected")}
    assert all(r["n"] == 12 and 0 <= r["accuracy"] <= r["consistency"] <= 1 for r in overall.values())
    assert set(result["preference"]) == {"gold", "retrieved"}
    assert all(p["n"] == 12 and p["unparseable"] == 0 for p in result["preference"].values())
    report = (tmp_path / "report.md").read_text()
    assert "accuracy.png" in report and "saliency.png" in report
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
