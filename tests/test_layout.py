"""The README's layout section is the real tree: every module listed, nothing listed that is gone."""

from __future__ import annotations

import re

from tests.helpers import REPO


def _layout_modules() -> set[str]:
    """Modules named in the README's tree: "  name/" opens a package folder, "    x.py" is a module
    in it, "  x.py" a top-level one."""
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("## Layout"):]
    lines = block[block.index("```\npersona_ray/\n") + len("```\npersona_ray/\n"):].splitlines()
    modules, folder = set(), "persona_ray"
    for line in lines:
        if not line.startswith("  "):  # jobs/, cluster/ ...: the package tree has ended
            break
        name = line.split()[0]
        depth = (len(line) - len(line.lstrip(" "))) // 2
        if depth == 1 and name.endswith("/"):
            folder = f"persona_ray/{name.rstrip('/')}"
        elif depth == 1:
            modules.add(f"persona_ray/{name}")
        elif name.endswith(".py"):
            modules.add(f"{folder}/{name}")
    return modules


def test_readme_layout_lists_every_module_and_only_real_ones():
    listed = _layout_modules()
    real = {str(p.relative_to(REPO)) for p in (REPO / "persona_ray").rglob("*.py")
            if p.name != "__init__.py" or p.parent.name == "engines"}
    real.discard("persona_ray/__main__.py")  # named on cli.py's line
    assert listed == real, {"not listed": sorted(real - listed), "listed but missing": sorted(listed - real)}


def test_stage_modules_do_not_import_ray_at_module_level():
    """The science stays free of Ray: prompts, parsing, scoring, templates and the persona rules."""
    pure = ["core/persona.py", "core/schema.py", "inference/prompt.py", "inference/parse.py", "inference/adapters.py",
            "quality/accuracy.py", "quality/saliency.py", "tailoring/templates.py", "tailoring/fewshot.py",
            "tailoring/base.py", "evaluation/pairwise.py", "dataset/splits.py", "retrieval/recall.py"]
    for rel in pure:
        text = (REPO / "persona_ray" / rel).read_text()
        assert not re.search(r"^(import ray|from ray)", text, re.MULTILINE), rel
