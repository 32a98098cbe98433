"""Sharded tables (mybag.distributed): 2, 3 and 4 gloo processes on loopback, each holding its
rows or columns of a DTensor table, equal one process holding the whole table, forward and
backward, in every mode and option (the cases are in sharded_cases.py)."""

import functools
import pathlib

import distributed_training as training
import pytest
import sharded_cases
import torch


def run_and_check(worker, world_size, tmp_path, least_cases):
    training.run_on_ranks(functools.partial(worker, world_size=world_size), tmp_path, "sharded",
                          world_size)
    for rank in range(world_size):
        report = pathlib.Path(tmp_path / f"rank{rank}.txt").read_text()
        count, _, failures = report.partition("\n")
        assert int(count.split()[0]) >= least_cases, report
        assert not failures, f"rank {rank} of {world_size}: {failures}"


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_sharded_tables_equal_one_process(world_size, tmp_path):
    run_and_check(sharded_cases.run_all, world_size, tmp_path, least_cases=100)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sharded_tables_on_cuda_with_nccl(tmp_path):
    # One rank per GPU (NCCL refuses two ranks on one device); a single GPU still runs the
    # shard ops, the CUDA kernels and NCCL's collectives.
    run_and_check(sharded_cases.run_cuda, min(torch.cuda.device_count(), 4), tmp_path,
                  least_cases=60)
