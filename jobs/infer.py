"""Persona inference entrypoint for `ray job submit` (and KubeRay RayJob).

    ray job submit --working-dir . -- python jobs/infer.py --config cluster/jobs/infer-gpu.yaml

Joins the cluster given by RAY_ADDRESS (set by Ray for submitted jobs). Resubmitting the same
config resumes from what the output folder already holds.
"""

import sys

from persona_ray.cli import app

if __name__ == "__main__":
    app(["infer", *sys.argv[1:]])
