"""Sharded tables (mybag.distributed): 2, 3 and 4 gloo processes on loopback, each holding its
rows or columns of a DTensor table, equal one process holding the whole table, forward and
backward, in every mode and option (the cases are in sharded_cases.py)."""

import functools
import pathlib

import distributed_training as training
import pytest
import sharded_cases


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_sharded_tables_equal_one_process(world_size, tmp_path):
    worker = functools.partial(sharded_cases.run_all, world_size=world_size)
    training.run_on_ranks(worker, tmp_path, "sharded", world_size)
    for rank in range(world_size):
        report = pathlib.Path(tmp_path / f"rank{rank}.txt").read_text()
        count, _, failures = report.partition("\n")
        assert int(count.split()[0]) > 100, report
        assert not failures, f"rank {rank} of {world_size}: {failures}"
