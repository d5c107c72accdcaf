"""Persona diagnostics (word saliency, traits) and the Markdown/PNG report."""

from __future__ import annotations

import json
import math

from pathlib import Path

import pytest

from persona_ray.quality.saliency import persona_words, preference_part, top_traits, word_saliency
from persona_ray.core.report import write_report

from tests.helpers import read_jsonl

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "persona, expected",
    [
        ("The user is busy and prefers concise answers over detailed ones.", "busy and prefers concise answers"),
        ("The user is calm and prefers facts rather than opinions.", "calm and prefers facts"),
        ("The user values examples instead of theory.", "values examples"),
        ("The user is wary and prefers data as opposed to  anecdotes.", "wary and prefers data"),
        ("The user prefers tables versus prose.", "prefers tables"),
        ("The user prefers tables vs prose.", "prefers tables"),
        # "overly" and "overview" contain "over" but are not the marker.
        ("The user is cautious and prefers an overview, not overly dramatic.",
         "cautious and prefers an overview, not overly dramatic"),
        ("the user is  curious and prefers depth", "curious and prefers depth"),
    ],
)
def test_preference_part_drops_opener_and_contrast(persona, expected):
    assert preference_part(persona) == expected


@pytest.mark.parametrize(
    "persona, expected",
    [
        # The contrasted part ("detailed explanations") is gone; "answers" is boilerplate.
        ("The user is a busy professional and prefers concise answers over detailed explanations.",
         ["busy", "professional", "concise"]),
        # Hyphenated words stay whole; plurals are lemmatised.
        ("The user is curious and prefers multi-faceted, step-by-step explanations rather than simple lists.",
         ["curious", "multi-faceted", "step-by-step", "explanation"]),
        # "-ed" adjectives keep their form; each word counts once per persona.
        ("The user values detailed examples and detailed explanations.",
         ["detailed", "example", "explanation"]),
        ("The user is cautious and prefers an overview of risks instead of overly dramatic warnings.",
         ["cautious", "overview", "risk"]),
        ("The user is a practical individual who prefers their responses to be brief.",
         ["practical", "brief"]),
    ],
)
def test_persona_words(persona, expected):
    assert persona_words(persona) == expected


def test_word_saliency_is_class_balanced_and_filtered():
    chosen = [
        "The user is curious and prefers thorough examples.",   # curious thorough example
        "The user is curious and prefers thorough examples.",
        "The user is calm and prefers thorough examples.",      # calm thorough example
        "The user is calm and prefers short examples.",         # calm short example
    ]
    rejected = [
        "The user is calm and prefers short examples.",
        "The user is busy and prefers short examples over thorough ones.",  # busy short example
    ]
    # Counts (chosen/rejected): thorough 3/0, example 4/2, short 1/2, calm 2/1, curious 2/0, busy 0/1.
    # min_count=3 keeps thorough, example, short, calm. With 4 chosen and 2 rejected personas:
    #   short:   (1/4) / (1/4 + 2/2) = 0.2 chosen, 0.8 rejected  (unbalanced would give 1/3)
    #   example: (4/4) / (4/4 + 2/2) = 0.5;  calm: (2/4) / (2/4 + 1/2) = 0.5;  thorough: 1.0
    result = word_saliency(chosen, rejected, min_count=3, top_k=10, method="p_label")
    as_pairs = {side: [(r["word"], round(r["p_label"], 6)) for r in rows] for side, rows in result.items()}
    # Ties on p_label are broken by total count (example 6 > calm 3).
    assert as_pairs["chosen"] == [("thorough", 1.0), ("example", 0.5), ("calm", 0.5), ("short", 0.2)]
    assert as_pairs["rejected"] == [("short", 0.8), ("example", 0.5), ("calm", 0.5), ("thorough", 0.0)]
    assert {k: result["rejected"][0][k] for k in ("word", "score", "p_label", "count_chosen", "count_rejected")} \
        == {"word": "short", "score": pytest.approx(0.8), "p_label": pytest.approx(0.8),
            "count_chosen": 1, "count_rejected": 2}

    top2 = word_saliency(chosen, rejected, min_count=3, top_k=2, method="p_label")
    assert [r["word"] for r in top2["chosen"]] == ["thorough", "example"]
    # min_count=2 lets "curious" (2/0) in; "busy" (0/1) stays out.
    words = {r["word"] for r in word_saliency(chosen, rejected, min_count=2, top_k=10, method="p_label")["chosen"]}
    assert "curious" in words and "busy" not in words


def test_word_saliency_on_empty_label():
    result = word_saliency(["The user is calm and prefers tea."], [], min_count=1, method="p_label")
    assert [(r["word"], r["p_label"]) for r in result["chosen"]] == [("calm", 1.0), ("tea", 1.0)]
    assert all(r["p_label"] == 0.0 for r in result["rejected"])
    by_log_odds = word_saliency(["The user is calm and prefers tea."], [], min_count=1)
    assert {r["word"] for r in by_log_odds["chosen"]} == {"calm", "tea"}
    # With the pooled counts as prior, a label with no personas gives no evidence: every z is 0.
    assert all(r["z"] == pytest.approx(0.0) for r in by_log_odds["chosen"])
    single = word_saliency(["The user is calm."], [], min_count=1)  # one word: no odds against others
    assert [(r["word"], r["z"]) for r in single["chosen"]] == [("calm", 0.0)]


def test_log_odds_ranks_frequent_one_sided_words_above_rare_ones():
    """Hand-computed: 'concise' in 40 of 50 rejected personas (and 10 chosen) outranks 'terse',
    in 3 rejected personas and none chosen, though P(rejected | terse) = 1.0 > 0.8."""
    rejected = ["The user is busy and prefers concise tips."] * 37 + \
               ["The user is busy and prefers concise, terse tips."] * 3 + ["The user is busy and prefers tips."] * 10
    chosen = ["The user is curious and prefers concise tips."] * 10 + ["The user is curious and prefers tips."] * 40
    by_p = word_saliency(chosen, rejected, min_count=3, top_k=2, method="p_label")["rejected"]
    by_z = word_saliency(chosen, rejected, min_count=3, top_k=2)["rejected"]
    assert [r["word"] for r in by_p] == ["busy", "terse"]
    assert [r["word"] for r in by_z] == ["busy", "concise"]
    concise = next(r for r in by_z if r["word"] == "concise")
    # counts: chosen curious 50, concise 10, tip 50 (n 110); rejected busy 50, concise 40, terse 3,
    # tip 50 (n 143); prior = pooled counts (concise 50, a0 = 50 + 50 + 50 + 3 + 100 = 253).
    a, a0, y_c, y_r, n_c, n_r = 50, 253, 10, 40, 110, 143
    delta = math.log((y_c + a) / (n_c + a0 - y_c - a)) - math.log((y_r + a) / (n_r + a0 - y_r - a))
    assert concise["z"] == pytest.approx(delta / math.sqrt(1 / (y_c + a) + 1 / (y_r + a)))
    assert concise["score"] == pytest.approx(-concise["z"]) and concise["method"] == "log_odds"
    with pytest.raises(ValueError, match="saliency method 'chi2'"):
        word_saliency(chosen, rejected, method="chi2")


def test_top_traits_reads_the_attribute_part():
    personas = [
        "The user is a practical and detail-oriented individual who prefers clear lists.",
        "The user is practical, preferring short steps.",
        "The user values honesty.",  # no attribute part
        "The user is practical and practical and prioritizes speed.",  # counted once
    ]
    assert top_traits(personas) == [{"trait": "practical", "count": 3}, {"trait": "detail-oriented", "count": 1}]
    assert top_traits(personas, top_k=1) == [{"trait": "practical", "count": 3}]


def _sections(markdown: str, level: str) -> dict[str, str]:
    """Heading text -> body, for headings starting with `level` ("## " or "### ")."""
    out, current = {}, None
    for line in markdown.splitlines():
        if line.startswith(level):
            current = line[len(level):]
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def test_report_omits_missing_sections_and_escapes_pipes(tmp_path):
    path = write_report(str(tmp_path / "r"), title="Only | notes", notes=["a | b"])
    text = Path(path).read_text()
    assert text.startswith("# Only | notes\n")
    assert "## Notes" in text and "- a | b" in text
    assert "## Persona accuracy" not in text and "## Word saliency" not in text
    assert not list((tmp_path / "r").glob("*.png"))

    accuracy = [{"model": "m|x", "domain": "all", "side": "chosen", "n": 3, "accuracy": 0.5,
                 "consistency": 1.0, "unparseable": 0}]
    text = Path(write_report(str(tmp_path / "a"), title="t", accuracy=accuracy)).read_text()
    assert "| m\\|x | all | chosen | 3 | 0.500 | n/a | 1.000 | 0 |" in text  # no single-order figure given
    assert "![accuracy](accuracy.png)" in text


def _write_full_report_and_check(folder: Path, saliency: dict, traits: list[dict],
                                 chosen_expected: set[str], rejected_expected: set[str]) -> None:
    """Every section of the report, with the salient words on their own side of the tables."""
    accuracy = [
        {"model": "llama-8b", "domain": "all", "side": "chosen", "n": 499, "accuracy": 0.81,
         "consistency": 0.9, "unparseable": 2},
        {"model": "llama-8b", "domain": "all", "side": "rejected", "n": 499, "accuracy": 0.64,
         "single_order_accuracy": 0.75, "consistency": 0.85, "unparseable": 5},
        {"model": "llama-8b", "domain": "BeaverTails", "side": "chosen", "n": 499, "accuracy": 0.81,
         "consistency": 0.9, "unparseable": 2},
    ]
    preference = {"n": 499, "chosen_wins": 300, "rejected_wins": 150, "ties": 40, "unparseable": 9,
                  "rejected_as_good_rate": 0.3}
    path = write_report(str(folder), title="BeaverTails personas", accuracy=accuracy,
                        preference=preference, saliency=saliency, traits=traits,
                        notes=["499 persona pairs"])
    assert path == str(folder / "report.md")
    text = Path(path).read_text()
    top = _sections(text, "## ")
    assert list(top) == ["Persona accuracy", "Preference judgements", "Word saliency", "Top traits", "Notes"]
    assert "| llama-8b | all | rejected | 499 | 0.640 | 0.750 | 0.850 | 5 |" in top["Persona accuracy"]
    assert "| rejected_as_good_rate | 0.300 |" in top["Preference judgements"]
    assert "![saliency](saliency.png)" in top["Word saliency"]

    sub = _sections(top["Word saliency"], "### ")
    for word in chosen_expected:
        assert f"| {word} |" in sub["Chosen personas"] and f"| {word} |" not in sub["Rejected personas"]
    for word in rejected_expected:
        assert f"| {word} |" in sub["Rejected personas"] and f"| {word} |" not in sub["Chosen personas"]
    for t in traits:
        assert f"| {t['trait']} | {t['count']} |" in top["Top traits"]

    for name in ("accuracy.png", "saliency.png"):
        assert (folder / name).read_bytes()[:8] == PNG_SIGNATURE


def test_full_report_on_small_personas(tmp_path):
    """The whole report on a handful of personas, so it is checked where the real file is absent."""
    chosen = ["The user is calm and prefers thorough, detailed examples."] * 3 + [
        "The user is curious and prefers detailed examples."]
    rejected = ["The user is busy and prefers short, simple examples.",
                "The user is calm and prefers short, simple examples.",
                "The user is calm and prefers simple answers."]
    saliency = word_saliency(chosen, rejected, min_count=2, top_k=2)
    assert {r["word"] for r in saliency["chosen"]} == {"thorough", "detailed"}
    assert {r["word"] for r in saliency["rejected"]} == {"short", "simple"}
    traits = top_traits(chosen + rejected, top_k=10)
    assert {t["trait"] for t in traits} == {"curious", "calm", "busy"}
    _write_full_report_and_check(tmp_path / "report", saliency, traits, {"thorough", "detailed"}, {"short", "simple"})


def test_real_personas_show_verbosity_bias_and_report(tmp_path, real_personas):
    # The paper's verbosity-bias finding on its 499 BeaverTails personas is the point: no bundled
    # data can stand in for it (the report itself is also checked by test_full_report_on_small_personas).
    rows = read_jsonl(real_personas)
    chosen = [r["chosen_persona"] for r in rows]
    rejected = [r["rejected_persona"] for r in rows]
    assert len(chosen) == len(rejected) == 499

    saliency = word_saliency(chosen, rejected, top_k=15, method="p_label")
    top_chosen = {r["word"] for r in saliency["chosen"]}
    top_rejected = {r["word"] for r in saliency["rejected"]}
    chosen_expected = top_chosen & {"comprehensive", "detailed", "thorough", "nuanced", "multi-faceted"}
    rejected_expected = top_rejected & {"concise", "straightforward", "simple", "simplicity"}
    assert len(chosen_expected) >= 2, saliency["chosen"]
    assert len(rejected_expected) >= 2, saliency["rejected"]
    for rows_ in saliency.values():
        assert all(r["count_chosen"] + r["count_rejected"] >= 5 for r in rows_)
        assert [r["p_label"] for r in rows_] == sorted((r["p_label"] for r in rows_), reverse=True)
    # The frequency-aware default (weighted log-odds z) at the paper's cut-offs (10 personas, top 10).
    by_log_odds = word_saliency(chosen, rejected, min_count=10, top_k=10)
    assert {"comprehensive", "detailed"} <= {r["word"] for r in by_log_odds["chosen"]}, by_log_odds["chosen"]
    assert {"concise", "straightforward"} <= {r["word"] for r in by_log_odds["rejected"]}, by_log_odds["rejected"]
    assert by_log_odds["chosen"][0]["word"] == "comprehensive"  # 150 chosen vs 36 rejected personas
    assert by_log_odds["rejected"][0]["word"] == "straightforward"  # 23 vs 146

    traits = top_traits(chosen + rejected, top_k=10)
    _write_full_report_and_check(tmp_path / "report", saliency, traits, chosen_expected, rejected_expected)


def test_report_cli_ranks_by_the_chosen_saliency_method(tmp_path):
    from click.testing import CliRunner

    from persona_ray.cli import app

    rows = [{"chosen_persona": "The user is calm and prefers thorough, detailed examples.",
             "rejected_persona": "The user is busy and prefers short, simple examples."}] * 3
    personas = tmp_path / "personas.jsonl"
    personas.write_text("".join(json.dumps(r) + "\n" for r in rows))
    headers = {}
    for method in ("log_odds", "p_label"):
        out = tmp_path / method
        run = CliRunner().invoke(app, ["report", "--personas", str(personas), "--output", str(out),
                                       "--min-count", "2", "--saliency-method", method])
        assert run.exit_code == 0, run.output
        table = _sections((out / "report.md").read_text(), "### ")["Chosen personas"]
        headers[method] = next(line for line in table.splitlines() if line.startswith("| word"))
    assert headers["log_odds"] == r"| word | log-odds z (chosen) | P(chosen \| word) | count chosen | count rejected |"
    assert headers["p_label"] == r"| word | P(chosen \| word) | count chosen | count rejected |"
    bad = CliRunner().invoke(app, ["report", "--personas", str(personas), "--output", str(tmp_path / "x"),
                                   "--saliency-method", "chi2"])
    assert bad.exit_code == 2 and "chi2" in bad.output
