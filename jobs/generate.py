"""`persona-ray generate` as a `ray job submit` entrypoint (joins the cluster in RAY_ADDRESS).

    ray job submit --working-dir . -- python jobs/generate.py --config <yaml>
"""

import sys

from persona_ray.cli import app

if __name__ == "__main__":
    app(["generate", *sys.argv[1:]])
