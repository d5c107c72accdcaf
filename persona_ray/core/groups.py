"""Grouping rows by a key across Ray workers, with the groups back in key order.

Jobs that must see every row of one id together (persona inference: an input pair and the personas
already written for it; augment: a pair and its two personas) group through Ray Data instead of
building a dict on the driver, so the driver's memory does not grow with the data.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import ray.data


def group_in_order(dataset: ray.data.Dataset, key: str, fn: Callable[..., pa.Table], fn_args: tuple = ()) -> ray.data.Dataset:
    """`fn(group_table, *fn_args)` over each key's rows, the results in key order.

    A sort-based shuffle returns the groups in key order and preserve_order keeps that order
    downstream, so what a job writes from them is the same every time; both are set on this
    dataset (and those derived from it), not on the process."""
    from ray.data.context import ShuffleStrategy

    dataset.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    dataset.context.execution_options.preserve_order = True
    return dataset.groupby(key).map_groups(fn, fn_args=fn_args, batch_format="pyarrow")
