"""Helpers the test files share: paths of bundled data, small readers and writers, PI inputs and
what a running job has committed, `persona-ray infer` run in a process of its own and killed with
everything it started, the tiny pipeline config, tracked runs read back with each
backend's own reader. Test files import these from here, never from one another."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PAIRS = REPO / "persona_ray" / "data" / "sample_pairs.jsonl"
PI_EXEMPLARS = REPO / "persona_ray" / "data" / "pi_exemplars.yaml"
# Real data kept beside the repository, never in it (CI has it; a plain clone does not): read it
# through shared_data(), which skips the test plainly when it is absent.
SHARED_DATA = REPO.parent / "shared" / "data"
REAL_PERSONAS = "beavertails-test-personas.jsonl"

FIXTURES = REPO / "tests" / "fixtures" / "adapters"


def free_port() -> int:
    """A free port in 20000-31999: outside the OS's ephemeral range, where every port-0 bind lands
    (a parallel test worker's Ray cluster makes many), and outside Ray's worker ports (10002-19999),
    so nobody else takes it between this check and the bind that follows."""
    for port in random.sample(range(20000, 32000), 500):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-31999")


class S3Server:
    """The tests' moto S3 server (conftest.py `s3_server`): its environment (endpoint, test
    credentials) and its process, which `pause` stops (SIGSTOP) as a stalled object store and
    `resume` lets go on."""

    def __init__(self, env: dict[str, str], process):
        self.env, self.process = env, process

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)


def infer_command(config: Path) -> list[str]:
    """`persona-ray infer --config CONFIG`, run with this environment's Python."""
    return [sys.executable, "-m", "persona_ray.cli", "infer", "--config", str(config)]


def write_yaml(path: Path, **cfg) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def local_env() -> dict:
    """This environment less the test S3 server's settings (a job that needs S3 is given them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


def descendants(process: subprocess.Popen) -> list:
    """Every process the job started so far (psutil), wherever its session or group."""
    import psutil

    try:
        return psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_group(process: subprocess.Popen, started: list = ()) -> None:
    """The job and everything it started (its local Ray cluster, the engine): its process group,
    the processes it has started now, and `started` (its descendants seen earlier: a vLLM engine
    process outlives its Ray worker, under init, and would keep its memory for the rest of the run)."""
    import psutil

    leftovers = [*started, *descendants(process)]
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for leftover in leftovers:
        try:
            leftover.kill()
        except psutil.Error:
            pass
    process.wait(timeout=60)


def field_line(prompt: str, header: str) -> str:
    """The line right after `header` in a judge prompt (where a delimited field sits)."""
    lines = prompt.splitlines()
    return lines[lines.index(header) + 1]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def shared_data(name: str = REAL_PERSONAS, what: str = "real personas, not redistributable") -> Path:
    """``../shared/data/<name>``, or skip the calling test (or fixture) saying what is missing.

    The file cannot ship with the repository, so tests that need it run where it exists (CI) and
    skip elsewhere; ``-ra`` (pyproject addopts) lists the reason in pytest's short summary. Call it
    from a fixture (as ``real_personas`` does) so the summary line names the test, not this file."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"needs ../shared/data/{name} ({what}); runs where it exists, e.g. CI")
    return path


def bundled_persona_rows() -> list[dict]:
    """60 rows shaped like the real persona file (id, prompt, gold and retrieved personas, two
    model responses), built only from data bundled in the package, for tests of mechanics.

    Prompts and responses are the sample pairs (their chosen/rejected answers stand in for the
    PT-DPO and DPO outputs); personas are the 20 persona-inference exemplars. For every row the
    four personas differ, and no two rows share the same (chosen, rejected) pair, so a row's
    personas identify it."""
    import yaml

    exemplars = yaml.safe_load(PI_EXEMPLARS.read_text())
    personas = [" ".join(e["persona"].split()) for domain in exemplars.values() for e in domain]
    n = len(personas)  # 20 (5 per domain)
    rows = []
    for i, pair in enumerate(read_jsonl(SAMPLE_PAIRS)):
        shift = i // n  # 0..2 over 60 rows: offsets {0}, {1..3}, {6}, {7..9} never collide
        rows.append({
            "id": pair["id"], "prompt": pair["prompt"], "domain": pair["domain"],
            "chosen_persona": personas[i % n], "rejected_persona": personas[(i + 1 + shift) % n],
            "retr_chosen_persona": personas[(i + 6) % n], "retr_rejected_persona": personas[(i + 7 + shift) % n],
            "pt_dpo_response": pair["chosen"], "dpo_response": pair["rejected"],
        })
    return rows


# Persona inference inputs and what a running job has committed.

def first_sample_pairs(path: Path, pairs: int) -> Path:
    """The first `pairs` sample pairs, as written in the bundled file."""
    path.write_text("".join(SAMPLE_PAIRS.read_text().splitlines(keepends=True)[:pairs]))
    return path


def many_pairs(path: Path, pairs: int) -> None:
    """`pairs` distinct pairs: the sample pairs with numbered prompt variants."""
    rows = [json.loads(line) for line in SAMPLE_PAIRS.read_text().splitlines() if line.strip()]
    with path.open("w") as handle:
        for i in range(pairs):
            row = dict(rows[i % len(rows)], id=f"many-{i:05d}")
            row["prompt"] = f"{row['prompt']} (case {i})"
            handle.write(json.dumps(row) + "\n")


def committed_rows(folder: Path) -> int:
    import pyarrow.parquet

    total = 0
    for shard in folder.glob("part-*.parquet"):
        try:
            total += pyarrow.parquet.read_metadata(shard).num_rows
        except OSError:
            pass  # renamed into place a moment ago by another process: counted next time
    return total


# The pipeline on the tiny model, at the smallest sizes that run every stage.

TRAIN = {"max_steps": 2, "per_device_batch_size": 2, "max_length": 384, "evaluate": False, "save_steps": 2}
TINY = {
    "pairs": {"input": str(SAMPLE_PAIRS)},
    # A few dozen prompts to index: encoded in the pipeline's process, no actor pool to start.
    "index": {"encode_workers": 0},
    # A random model: sampling (seeded) gives varied words where greedy decoding repeats one token,
    # which the persona rules refuse as degenerate.
    "engine": {"model": "tiny", "sampling": {"max_tokens": 192, "temperature": 1.0, "seed": 0},
               "vllm": {"batch_size": 32}},
    "judge": {"model": "tiny"},
    "infer": {"k_shot": 1, "max_attribute_chars": 60, "max_preference_chars": 100},
    "sft": TRAIN, "dpo": TRAIN,
    "generation": {"max_tokens": 16}, "judge_sampling": {"max_tokens": 64}, "max_feedback_chars": 40,
}


# Rows shaped like the paper's outputs.

def paper_rows(persona_prefix: str, n: int = 12) -> list[dict]:
    """Rows shaped like the paper's BeaverTails outputs, from bundled data (the pipeline's
    mechanics are under test, not the tiny judge's accuracy); the two model responses (PT-DPO
    and DPO) stand in for the chosen and rejected responses."""
    rows = bundled_persona_rows()[:n]
    return [{"pair_id": r["id"], "prompt": r["prompt"], "chosen": r["pt_dpo_response"],
             "rejected": r["dpo_response"], "domain": "safety_qa",
             "chosen_persona": r[f"{persona_prefix}chosen_persona"],
             "rejected_persona": r[f"{persona_prefix}rejected_persona"]} for r in rows]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# Tracked runs, read back with each backend's own reader.

def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of every event file under `folder`, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for events in sorted({p.parent for p in folder.rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return scalars


def mlflow_runs(uri: str, experiment: str = "persona-ray") -> list:
    import os

    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 reads its file store only when told to
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def wandb_runs(folder) -> list[dict]:
    """Every W&B run written under `folder` (offline): its name, group, tags, config and history rows,
    read from the run's own record file (a LevelDB-style log of wandb's protobuf Records)."""
    import json
    from pathlib import Path

    from wandb.proto import wandb_internal_pb2

    runs = []
    for path in sorted(Path(folder).rglob("run-*.wandb")):
        data, pos, block, chunk = path.read_bytes(), 7, 32768, b""  # 7: the ":W&B" file header
        run = {"history": [], "config": {}, "summary": {}}
        while pos + 7 <= len(data):
            if block - pos % block < 7:  # a block's tail too short for a record header is padding
                pos += block - pos % block
                continue
            length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
            chunk += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind not in (1, 4):  # a record split over blocks ends with kind 4 ("last")
                continue
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            kind_name = record.WhichOneof("record_type")
            if kind_name == "run":
                run.update(name=record.run.display_name, group=record.run.run_group, tags=list(record.run.tags),
                           job_type=record.run.job_type)
                run["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind_name == "config":
                run["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
            elif kind_name == "history":
                run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in record.history.item})
            elif kind_name == "exit":
                run["exit_code"] = record.exit.exit_code
        runs.append(run)
    return runs


def finished_wandb_runs(folder, count: int = 1, timeout: float = 60) -> list[dict]:
    """wandb_runs once `count` runs have their exit record: W&B's writer process may still be
    writing a moment after `finish()` returns."""
    import time

    deadline = time.time() + timeout
    while True:
        runs = wandb_runs(folder)
        if sum("exit_code" in run for run in runs) >= count or time.time() > deadline:
            return runs
        time.sleep(0.5)


