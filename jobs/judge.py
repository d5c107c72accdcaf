"""`persona-ray judge` as a `ray job submit` entrypoint (joins the cluster in RAY_ADDRESS).

    ray job submit --working-dir . -- python jobs/judge.py --config <yaml>
"""

import sys

from persona_ray.cli import app

if __name__ == "__main__":
    app(["judge", *sys.argv[1:]])
