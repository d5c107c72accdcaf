"""jobs/benchmarks/gpu_check.py stays runnable between GPU sessions: on CPU, with Ray and vLLM made
unimportable (a GPU machine may have only torch, transformers, peft and TRL). pydantic stays: TRL
imports it here through the tracking packages installed beside it (W&B, MLflow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.helpers import REPO

BLOCKED = "import sys, runpy\nfor m in ('ray', 'vllm'): sys.modules[m] = None\n" \
          "sys.argv = ['gpu_check.py'] + sys.argv[1:]\nrunpy.run_path({script!r}, run_name='__main__')\n"


@pytest.mark.slow  # the script in a process of its own
def test_gpu_check_times_sft_and_dpo_steps_without_ray_or_vllm(tiny_model, tmp_path):
    script = str(REPO / "jobs" / "benchmarks" / "gpu_check.py")
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, "-c", BLOCKED.format(script=script), "--model", tiny_model, "--steps", "3",
                           "--batch", "2", "--device", "cpu", "--out", str(out), "--work-dir", str(tmp_path / "w")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert [r["method"] for r in results] == ["pt-sft", "pt-dpo"]
    for r in results:
        assert r["steps"] == 3 and r["dtype"] == "float32" and r["seconds_per_step"] > 0
        assert math.isfinite(r["first_loss"]) and math.isfinite(r["last_loss"])
        assert f"{r['method']:<7} " in done.stdout
    # DPO starts where the policy equals the reference: the loss is log 2.
    assert abs(results[1]["first_loss"] - math.log(2)) < 1e-3
    # GPU-only flags are refused plainly on a machine without one.
    import torch

    if torch.cuda.is_available():
        return
    refused = subprocess.run([sys.executable, script, "--device", "cuda", "--model", tiny_model], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "torch sees no GPU" in refused.stderr
