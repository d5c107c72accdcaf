"""Starting or joining Ray: the only place the pipeline stages learn where they run."""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the cluster in RAY_ADDRESS (as under `ray job submit`), else start a local one.

    A local cluster gets at least 4 logical CPUs: on a 2-core machine Ray Data's helper
    stages and an engine actor otherwise wait on each other forever.
    """
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    cpus = num_cpus or max(4, os.cpu_count() or 1)
    # address="local": never join a cluster that `ray start` left on this machine by accident;
    # joining one is said with RAY_ADDRESS.
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=True)
    log.info("started a local Ray cluster with %d logical CPUs", cpus)
