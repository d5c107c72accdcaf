"""core/groups: rows grouped by key across Ray workers, back in key order, in blocks a driver can
stream cheaply."""

from __future__ import annotations

import pyarrow as pa
import ray.data

from persona_ray.core.groups import group_in_order


def _count_group(group: pa.Table) -> pa.Table:
    return pa.table({"key": [group["key"][0].as_py()], "rows": [group.num_rows],
                     "total": [sum(group["value"].to_pylist())]})


def test_groups_come_back_in_key_order_one_row_each_in_single_chunk_columns(ray_local):
    keys = [f"k{(i * 7919) % 500:04d}" for i in range(3000)]  # 500 keys, 6 rows each, out of order
    dataset = ray.data.from_items([{"key": k, "value": i} for i, k in enumerate(keys)], override_num_blocks=12)

    grouped = group_in_order(dataset, "key", _count_group)

    rows = [row for batch in grouped.iter_batches(batch_format="pyarrow", batch_size=None)
            for row in batch.to_pylist()]
    assert [row["key"] for row in rows] == sorted(set(keys))
    assert all(row["rows"] == 6 for row in rows)
    assert sum(row["total"] for row in rows) == sum(range(3000))
    # One chunk per column per block, not one per group: a block of many one-row chunks costs the
    # reader (the driver, streaming rows into files) heap for every chunk.
    for bundle in grouped.iter_internal_ref_bundles():
        for block in ray.get(bundle.block_refs):
            assert all(column.num_chunks <= 1 for column in block.columns), \
                [column.num_chunks for column in block.columns]
