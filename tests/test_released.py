"""The paper's released dataset schema read into an augmented folder (a fixture with its columns;
the real dataset needs a hub, which this machine cannot reach)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from click.testing import CliRunner

from persona_ray.cli import app
from persona_ray.core import storage
from persona_ray.dataset.released import RELEASED_COLUMNS, ImportReleasedConfig, run_import_released
from persona_ray.dataset.splits import SPLITS, read_split

SIZES = {"fewshot": 5, "sft_train": 6, "sft_val": 2, "dpo_train": 6, "dpo_val": 2, "test": 4}  # HHH's shape, small


def _row(split: str, i: int) -> dict:
    return {"prompt": f"{split} question {i}?", "chosen": f"A careful answer {i}.", "rejected": f"Short {i}.",
            "chosen_persona_gold": "The user is thorough and prefers careful answers.",
            "rejected_persona_gold": "The user is busy and prefers short answers.",
            "chosen_persona_retr": "The user is curious and prefers detail.",
            "rejected_persona_retr": "The user is hurried and prefers brevity."}


@pytest.fixture
def released(tmp_path):
    """Hub layout for sft/dpo/test (<config>/<split>-00000-of-00001.parquet), plain files for the rest."""
    folder = tmp_path / "released"
    for split, n in SIZES.items():
        rows = [_row(split, i) for i in range(n)]
        if split == "test":
            rows[1]["chosen_persona_gold"] = "The user is a devout Catholic and prefers careful answers."
            rows[2]["rejected"] = ""
        table = pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string()) for c in RELEASED_COLUMNS]))
        if split == "fewshot":
            (folder).mkdir(parents=True, exist_ok=True)
            (folder / "fewshot.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            storage.write_parquet(table, str(folder / "Anthropic HHH" / f"{split}-00000-of-00001.parquet"))
    return folder


def test_released_splits_keep_their_sizes_and_map_onto_the_projects_rows(released, tmp_path):
    out = tmp_path / "augmented"
    manifest = run_import_released(ImportReleasedConfig(source=str(released), subset="Anthropic HHH", output=str(out)))
    assert manifest["splits"] == {**SIZES, "test": 2} and manifest["quarantined"] == 2
    test = read_split(str(out), "test")
    assert [r["pair_id"] for r in test] == ["Anthropic_HHH-test-0", "Anthropic_HHH-test-3"]
    first = test[0]
    assert first["domain"] == "dialogue" and first["source"] == "persona-tailoring"
    assert first["chosen_persona"] == "The user is thorough and prefers careful answers."
    assert first["retr_rejected_persona"] == "The user is hurried and prefers brevity."
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert quarantine[0]["split"] == "test" and quarantine[0]["row"] == 1
    assert quarantine[0]["reason"].startswith("chosen_persona_gold: ") and "religion" in quarantine[0]["reason"]
    assert quarantine[1] == {"split": "test", "row": 2, "reason": "rejected: missing, empty or not text"}
    assert {f.name for f in out.iterdir()} >= {f"{s}.parquet" for s in SPLITS}
    # The SFT and DPO pools of the release stay as released (disjoint here).
    sft = {r["prompt"] for r in read_split(str(out), "sft_train")}
    assert sft and not sft & {r["prompt"] for r in read_split(str(out), "dpo_train")}


def test_import_released_cli_names_what_it_could_not_find(tmp_path):
    run = CliRunner().invoke(app, ["import-released", "--source", str(tmp_path), "--subset", "BeaverTails",
                                   "--output", str(tmp_path / "out")])
    assert run.exit_code == 2, run.output
    assert "no fewshot.parquet, fewshot.jsonl or BeaverTails/fewshot-*.parquet" in run.output
