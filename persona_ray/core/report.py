"""A Markdown report with PNG plots for persona-inference diagnostics, in a local folder.

`write_report(folder, title=..., ...)` writes `folder/report.md` and, when there is data for
them, `accuracy.png` and `saliency.png` next to it (image links are relative). Every
section is optional; a section given as None is left out.

Data contract:
    accuracy    [{"model", "domain" ("all" = overall), "side" ("chosen" | "rejected"),
                  "n", "accuracy" (0..1), "consistency" (0..1), "unparseable"}]
    preference  {"n", "chosen_wins", "rejected_wins", "ties", "unparseable",
                  "rejected_as_good_rate"}
    saliency    `diagnose.word_saliency` output: {"chosen": [...], "rejected": [...]}
    traits      `diagnose.top_traits` output: [{"trait", "count"}]
    pairwise    `pairwise.aggregate` output: per (comparison, persona_source) counts, p_win,
                q_win, delta_pq and their 95 % CI bounds (None when undefined)
    examples    [{"row_id", "prompt", "chosen_persona", "rejected_persona",
                  "answers": [{"model", "persona_source", "persona", "response"}]}]: test prompts
                  with their inferred personas and each model's answer, shown first
    notes       free-text lines, listed at the end

Plots use matplotlib's Agg canvas directly (no pyplot), so no display and no global
backend state are involved.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from persona_ray.core.schema import SIDES

_SIDE_COLOURS = {"chosen": "#2b7bba", "rejected": "#d95f02"}


def _cell(value: object) -> str:
    """One Markdown table cell: floats to 3 decimals, pipes escaped, no line breaks."""
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    return " ".join(text.split()).replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def save_figure(fig: Figure, path: str) -> None:
    FigureCanvasAgg(fig)  # attaches the Agg canvas to the figure
    fig.savefig(path, dpi=120)


def _accuracy_plot(rows: list[dict], path: str) -> bool:
    """Grouped bars: one group per model, one bar per side, from the domain == "all" rows."""
    overall = {(r["model"], r["side"]): r["accuracy"] for r in rows if r["domain"] == "all"}
    if not overall:
        return False
    models = list(dict.fromkeys(model for model, _ in overall))
    width = 0.8 / len(SIDES)
    fig = Figure(figsize=(max(4.0, 1.6 * len(models) + 2), 3.6), layout="constrained")
    ax = fig.add_subplot()
    for i, side in enumerate(SIDES):
        # A missing (model, side) gets no bar rather than a misleading zero.
        present = [m for m, model in enumerate(models) if (model, side) in overall]
        xs = [m + (i - (len(SIDES) - 1) / 2) * width for m in present]
        ys = [overall[(models[m], side)] for m in present]
        bars = ax.bar(xs, ys, width, label=side, color=_SIDE_COLOURS[side])
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(len(models)), models, rotation=15, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy")
    ax.set_title("Persona accuracy (all domains)")
    ax.legend()
    save_figure(fig, path)
    return True


def _score_label(items: list[dict], side: str) -> str:
    if items and items[0]["method"] == "p_label":
        return f"P({side} | word)"
    return f"log-odds z ({side})"


def _saliency_plot(saliency: dict, path: str) -> None:
    """Two horizontal bar panels, each label's top words by their saliency score (best on top)."""
    fig = Figure(figsize=(9, 0.3 * max(len(saliency.get(s, [])) for s in SIDES) + 1.5),
                 layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, side in zip(axes, SIDES):
        items = saliency.get(side, [])
        ax.barh([it["word"] for it in items], [it["score"] for it in items],
                color=_SIDE_COLOURS[side])
        ax.invert_yaxis()
        if items and items[0]["method"] == "p_label":
            ax.axvline(0.5, color="grey", linestyle="--", linewidth=0.8)  # no preference either way
            ax.set_xlim(0, 1)
        ax.set_xlabel(_score_label(items, side))
        ax.set_title(f"{side} personas")
    save_figure(fig, path)


_SOURCE_LABEL = {"gold-chosen": "given the chosen persona", "gold-rejected": "given the rejected persona",
                 "retr-chosen": "given the retrieved chosen persona", "retr-rejected": "given the retrieved rejected "
                 "persona", "none": "no persona"}


def _quote(text: object, limit: int = 400) -> str:
    """Model or user text on one line, shortened, with Markdown's active characters escaped."""
    line = " ".join(str(text or "(empty)").split())
    line = line if len(line) <= limit else line[: limit - 1] + "…"
    for char in "\\`*_[]<>#|":
        line = line.replace(char, "\\" + char)
    return line


def with_ci(value: float | None, lo: float | None, hi: float | None, scale: float = 1.0) -> str:
    if value is None:
        return "n/a"
    bounds = f" [{lo * scale:.1f}, {hi * scale:.1f}]" if lo is not None and hi is not None else ""
    return f"{value * scale:.1f}{bounds}"


def _delta_pq_plot(rows: list[dict], path: str) -> bool:
    """Horizontal bars of ΔPQ with 95 % CI whiskers, one bar per (comparison, persona source)."""
    shown = [r for r in rows if r["delta_pq"] is not None]
    if not shown:
        return False
    labels = [f"{r['comparison']} · {r['persona_source']}" for r in shown]
    values = [r["delta_pq"] for r in shown]
    low = [r["delta_pq"] - r["delta_pq_lo"] if r["delta_pq_lo"] is not None else 0 for r in shown]
    high = [r["delta_pq_hi"] - r["delta_pq"] if r["delta_pq_hi"] is not None else 0 for r in shown]
    fig = Figure(figsize=(7.0, 1.0 + 0.45 * len(shown)), layout="constrained")
    ax = fig.add_subplot()
    colours = [_SIDE_COLOURS["rejected"] if "rejected" in r["persona_source"] else _SIDE_COLOURS["chosen"]
               for r in shown]
    ax.barh(range(len(shown)), values, xerr=[low, high], color=colours, capsize=3)
    ax.set_yticks(range(len(shown)), labels)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlim(-100, 100)
    ax.set_xlabel("ΔPQ (personalization and quality gain over the base model; 95 % CI)")
    save_figure(fig, path)
    return True


def write_report(
    folder: str,
    *,
    title: str,
    accuracy: list[dict] | None = None,
    preference: dict | None = None,
    saliency: dict | None = None,
    traits: list[dict] | None = None,
    pairwise: list[dict] | None = None,
    examples: list[dict] | None = None,
    intro: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> str:
    """Write `folder/report.md` (and its PNG plots); returns the report's path."""
    os.makedirs(folder, exist_ok=True)
    md = [f"# {' '.join(title.split())}", ""]
    md += [*intro, ""] if intro else []

    if examples:
        md += ["## What it does: personas and tailored answers", ""]
        for number, ex in enumerate(examples, start=1):
            md += [f"### Example {number}", "", f"**Prompt:** {_quote(ex['prompt'], 600)}", "",
                   f"- persona inferred for the **chosen** response: {_quote(ex['chosen_persona'])}",
                   f"- persona inferred for the **rejected** response: {_quote(ex['rejected_persona'])}", ""]
            for answer in ex["answers"]:
                md += [f"**{answer['model']}**, {_SOURCE_LABEL.get(answer['persona_source'], answer['persona_source'])}:",
                       "", f"> {_quote(answer['response'], 700)}", ""]

    if accuracy is not None:
        md += ["## Persona accuracy", ""]
        md += markdown_table(
            ["model", "domain", "side", "n", "accuracy (both orders)", "accuracy (single order, the paper's)",
             "consistency", "unparseable"],
            [[r["model"], r["domain"], r["side"], r["n"], float(r["accuracy"]),
              "n/a" if r.get("single_order_accuracy") is None else float(r["single_order_accuracy"]),
              float(r["consistency"]), r["unparseable"]] for r in accuracy],
        )
        if _accuracy_plot(accuracy, os.path.join(folder, "accuracy.png")):
            md += ["![accuracy](accuracy.png)", ""]

    if preference is not None:
        md += ["## Preference judgements", ""]
        keys = ["n", "chosen_wins", "rejected_wins", "ties", "unparseable", "rejected_as_good_rate"]
        md += markdown_table(["metric", "value"], [[k, preference[k]] for k in keys if k in preference])

    if saliency is not None:
        md += ["## Word saliency", ""]
        for side in SIDES:
            md += [f"### {side.capitalize()} personas", ""]
            items = saliency.get(side, [])
            by_log_odds = bool(items) and items[0]["method"] == "log_odds"  # then P(label | word) beside z
            md += markdown_table(
                ["word", _score_label(items, side)] + ([f"P({side} | word)"] if by_log_odds else [])
                + ["count chosen", "count rejected"],
                [[it["word"], float(it["score"])] + ([float(it["p_label"])] if by_log_odds else [])
                 + [it["count_chosen"], it["count_rejected"]] for it in items],
            )
        _saliency_plot(saliency, os.path.join(folder, "saliency.png"))
        md += ["![saliency](saliency.png)", ""]

    if traits is not None:
        md += ["## Top traits", ""]
        md += markdown_table(["trait", "count"], [[t["trait"], t["count"]] for t in traits])

    if pairwise is not None:
        md += ["## Pairwise judgements (test model vs base model)", "",
               "Win rate = test wins / (test + base wins), ties and unparseable verdicts left out; "
               "ΔPQ = ½·(2·p_win − 1 + 2·q_win − 1)·100. Brackets: bootstrap 95 % CI over test rows.", ""]
        md += markdown_table(
            ["comparison", "persona source", "rows", "personalization win % (W/T/L)", "quality win % (W/T/L)",
             "ΔPQ"],
            [[r["comparison"], r["persona_source"], r["n_rows"],
              f"{with_ci(r['p_win'], r['p_win_lo'], r['p_win_hi'], 100)} ({r['p_test']}/{r['p_tie']}/{r['p_base']})",
              f"{with_ci(r['q_win'], r['q_win_lo'], r['q_win_hi'], 100)} ({r['q_test']}/{r['q_tie']}/{r['q_base']})",
              with_ci(r["delta_pq"], r["delta_pq_lo"], r["delta_pq_hi"])] for r in pairwise],
        )
        if _delta_pq_plot(pairwise, os.path.join(folder, "pairwise_delta_pq.png")):
            md += ["![delta PQ](pairwise_delta_pq.png)", ""]

    if notes:
        md += ["## Notes", ""] + [f"- {' '.join(n.split())}" for n in notes] + [""]

    path = os.path.join(folder, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    return path
