"""The whole pipeline (PI to the judged report) as one `ray job submit` / KubeRay RayJob entrypoint.

    ray job submit --working-dir . -- python jobs/pipeline.py --config cluster/paper/hhh.yaml \
        --input s3://bucket/pairs/hhh.jsonl --output /mnt/persona-ray/runs/hhh

Joins the cluster given by RAY_ADDRESS (set by Ray for submitted jobs). `output` is a folder every
node sees at the same path (a shared volume): the stages write there and the trainers read it.
Resubmitting the same command skips every finished stage and resumes the one that was cut short.
"""

import sys

from persona_ray.cli import app

if __name__ == "__main__":
    app(["pipeline", *sys.argv[1:]])
