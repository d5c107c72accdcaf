"""`persona-ray train sft|dpo` as a `ray job submit` entrypoint (joins the cluster in RAY_ADDRESS).

    ray job submit --working-dir . -- python jobs/train.py sft --config <yaml>
    ray job submit --working-dir . -- python jobs/train.py dpo --config <yaml>
"""

import sys

from persona_ray.cli import app

if __name__ == "__main__":
    app(["train", *sys.argv[1:]])
