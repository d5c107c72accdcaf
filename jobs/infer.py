"""Persona inference entrypoint for `ray job submit` (and KubeRay RayJob).

    ray job submit --working-dir . -- python jobs/infer.py --config cluster/infer-gpu.yaml

Joins the cluster given by RAY_ADDRESS (set by Ray for submitted jobs). Resubmitting the same
config resumes from what the output folder already holds.
"""

from persona_ray.cli import app

if __name__ == "__main__":
    app(["infer", *__import__("sys").argv[1:]])
