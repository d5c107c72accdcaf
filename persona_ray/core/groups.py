"""Grouping rows by a key across Ray workers, with the groups back in key order.

Jobs that must see every row of one id together (persona inference: an input pair and the personas
already written for it; augment: a pair and its two personas) group through Ray Data instead of
building a dict on the driver, so the driver's memory does not grow with the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyarrow as pa
import ray.data


PIECE_BYTES = 1 << 20


def few_blocks(dataset: ray.data.Dataset) -> ray.data.Dataset:
    """The dataset materialized and re-cut into about sqrt(size / 1 MiB) blocks, for a sort-based
    shuffle. Such a shuffle cuts every block into one piece per output block, so M blocks make
    M² pieces, and Ray keeps a task's results under 100 KB in the memory of the process that
    owns them: the driver. With M = sqrt(size / 1 MiB) each piece is about 1 MiB and lives in
    the object store (measured: 100,000 rows in 390 blocks grew the driver by 673 MiB)."""
    dataset = dataset.materialize()
    blocks = max(1, math.isqrt(int(dataset.size_bytes() // PIECE_BYTES)))
    return dataset.repartition(min(blocks, dataset.num_blocks()))


def group_in_order(dataset: ray.data.Dataset, key: str, fn: Callable[..., pa.Table], fn_args: tuple = ()) -> ray.data.Dataset:
    """`fn(group_table, *fn_args)` over each key's rows, the results in key order.

    A sort-based shuffle returns the groups in key order and preserve_order keeps that order
    downstream, so what a job writes from them is the same every time; both are set on this
    dataset (and those derived from it), not on the process."""
    from ray.data.context import ShuffleStrategy

    dataset = few_blocks(dataset)
    dataset.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    dataset.context.execution_options.preserve_order = True
    grouped = dataset.groupby(key).map_groups(fn, fn_args=fn_args, batch_format="pyarrow")
    return grouped.map_batches(_one_chunk, batch_format="pyarrow", batch_size=None)


def _one_chunk(table: pa.Table) -> pa.Table:
    """The table with each column in one chunk. map_groups stacks the groups' results, one chunk
    per group per column: every reader of such a block (the driver streaming it into files) pays
    for each chunk's arrays and buffers, measured at about 70 MiB of the driver's heap per
    10,000 one-row groups."""
    return table.combine_chunks()
