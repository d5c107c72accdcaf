"""The persona-world report: compliance and preference accuracy per persona type and model.

    write_world_report(world) -> {"compliance", "gaps", "report"}

report/report.md holds: the world (kept responses, pairs per split), PI accuracy against the
truth, preference accuracy per type, style compliance per type with PT-DPO - DPO gaps (95 % CIs
over test prompts), the judge and its agreement with the style program; report/compliance.png
plots compliance per type (majority to minority) for every model; report/results.json holds it all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from persona_ray.core import storage
from persona_ray.core.report import markdown_table, save_figure, with_ci
from persona_ray.world.measure import MINORITY, bootstrap_by_prompt, compliance, rate_by_type

if TYPE_CHECKING:
    from persona_ray.world.experiment import World


def _gaps(world: "World", rows: list[dict], ok: dict[str, dict[str, bool]], test: str, base: str) -> dict:
    majority = world.cfg.types[0].name
    groups = {t.name: (lambda row, n=t.name: row["chosen_type"] == n) for t in world.cfg.types}
    groups[MINORITY] = lambda row: row["chosen_type"] != majority
    return {name: bootstrap_by_prompt(rows, ok[test], ok[base], group, world.cfg.n_boot, world.cfg.seed)
            for name, group in groups.items()}


def _plot(compliant: dict[str, dict], names: list[str], path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(compliant))
    for number, (label, rates) in enumerate(compliant.items()):
        xs = [i + number * width for i in range(len(names))]
        ax.bar(xs, [rates.get(n, {}).get("rate", 0.0) for n in names], width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
    ax.set_ylabel("style compliance")
    ax.set_ylim(0, 1)
    ax.set_title("Answers in the user's style, majority (left) to smallest minority (right)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def write_world_report(world: "World") -> dict:
    cfg, out = world.cfg, world.out
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    names = [t.name for t in cfg.types]
    build, infer, measure, judge = (world.summary(s) or {} for s in ("build", "infer", "measure", "judge"))
    lines = ["# Persona world", "",
             f"Base model `{cfg.model}`, writer `{cfg.writer}`, seed {cfg.seed}; types (share): "
             + ", ".join(f"{t.name} ({t.share:.0%})" for t in cfg.types) + ".",
             f"Prompts {build.get('prompts')}, kept {build.get('prompts_kept')} (a response confirmed in every "
             f"style); prompts per split {build.get('prompts_by_split')}; pairs per split {build.get('pairs')}.", ""]
    if build.get("written"):
        lines += ["Responses written by the model and confirmed by the style program:", ""]
        lines += markdown_table(["style", "asked", "kept", "kept by round"],
                                [[s, c["asked"], c["kept"], c["kept_by_round"]] for s, c in build["written"].items()])
    if infer.get("pi_accuracy_vs_truth"):
        acc = infer["pi_accuracy_vs_truth"]
        lines += ["PI accuracy against the truth (share of inferred personas naming the true value of each axis):", ""]
        lines += markdown_table(["side", "length", "form", "both"],
                                [[s, acc[f"{s}_length"], acc[f"{s}_form"], acc[f"{s}_both"]]
                                 for s in ("chosen", "rejected")])
    results: dict = {"preference_accuracy": measure.get("preference_accuracy")}
    if measure.get("preference_accuracy"):
        lines += ["Preference accuracy on held-out pairs (implicit reward ranks the user's chosen response first):",
                  ""]
        lines += markdown_table(["model", *names, MINORITY, "all"],
                                [[label, *(r.get(n) for n in names), r.get(MINORITY), r.get("all")]
                                 for label, r in measure["preference_accuracy"].items()])
    answered = {label: world.answers(label) for label in world.models()}
    if any(answered.values()):
        rows = world.test_rows()
        majority = names[0]
        ok = {label: compliance(rows, answers, cfg.types) for label, answers in answered.items()}
        compliant = {label: rate_by_type(rows, ok[label], majority) for label in ok}
        lines += ["Style compliance of generated answers under the user's persona (style program):", ""]
        lines += markdown_table(["model", *names, MINORITY, "all"],
                                [[label, *(r.get(n, {}).get("rate") for n in (*names, MINORITY, "all"))]
                                 for label, r in compliant.items()])
        gaps = {f"{test} - {base}": _gaps(world, rows, ok, test, base)
                for test, base in (("PT-DPO", "DPO"), ("PT-DPO", "DPO+persona"), ("PT-DPO-inferred", "DPO"),
                                   ("PT-DPO", "PT-DPO-inferred")) if test in ok and base in ok}
        lines += ["Compliance gaps, points, with 95 % CIs from resampling test prompts:", ""]
        lines += markdown_table(["gap", *names, MINORITY],
                                [[gap, *(with_ci(g[n]["diff"], g[n]["lo"], g[n]["hi"], 100) for n in (*names, MINORITY))]
                                 for gap, g in gaps.items()])
        _plot(compliant, names, str(folder / "compliance.png"))
        lines += ["![compliance per type](compliance.png)", ""]
        results.update({"compliance": compliant, "gaps": gaps})
    if judge.get("judge_vs_style_program"):
        agreement = judge["judge_vs_style_program"]
        lines += [f"Judge ({cfg.judge.model if cfg.judge else '?'}) PT-DPO vs DPO, personalization rubric, both "
                  f"orders: of {agreement['decidable']} test rows where exactly one answer is in the user's style, "
                  f"it named that one {agreement['agree']} times, the other {agreement['disagree']}, tied "
                  f"{agreement['tie']}, unparseable {agreement['unparseable']} (agreement "
                  f"{with_ci(agreement['agreement'], None, None, 100)} %).", ""]
        results["judge"] = judge
    (folder / "report.md").write_text("\n".join(lines), encoding="utf-8")
    storage.write_json(results, str(folder / "results.json"))
    return {"report": str(folder / "report.md"), **{k: v for k, v in results.items() if k == "gaps"}}
