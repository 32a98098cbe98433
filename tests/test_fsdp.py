"""mybag.EmbeddingBag sharded by FSDP (``fully_shard``): 2 gloo processes on loopback train the
same model as one process does on the global batch (dense gradients: FSDP has no sparse ones,
for torch's module either). The helpers are test_ddp's."""

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from test_ddp import (
    BAGS_PER_STEP,
    JOIN_TIMEOUT_S,
    PG_TIMEOUT_S,
    WORLD_SIZE,
    free_port,
    new_model,
    train,
)

CONFIGS = [("sum", False, None), ("mean", False, 0), ("max", False, None)]


def worker(rank, port, out_dir):
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=PG_TIMEOUT_S),
    )
    try:
        for index, config in enumerate(CONFIGS):
            model = new_model(config)
            fully_shard(model.bag)  # the table is its own FSDP unit, as for torch's module
            fully_shard(model)
            train(model, list(range(rank, BAGS_PER_STEP, WORLD_SIZE)), model.parameters())
            # full_tensor() is a collective: every rank gathers, rank 0 saves.
            state = {name: value.full_tensor() for name, value in model.state_dict().items()}
            if rank == 0:
                torch.save(state, os.path.join(out_dir, f"config{index}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_fsdp_training_equals_one_process_on_the_global_batch(tmp_path):
    context = mp.get_context("spawn")
    port = free_port()
    processes = [
        context.Process(target=worker, args=(rank, port, str(tmp_path)))
        for rank in range(WORLD_SIZE)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=JOIN_TIMEOUT_S)
    hung = [p.pid for p in processes if p.is_alive()]
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    assert not hung, f"FSDP workers {hung} did not finish within {JOIN_TIMEOUT_S} s"
    assert [p.exitcode for p in processes] == [0] * WORLD_SIZE

    for index, config in enumerate(CONFIGS):
        single = new_model(config)
        train(single, list(range(BAGS_PER_STEP)), single.parameters())
        sharded = torch.load(tmp_path / f"config{index}.pt")
        for name, value in single.state_dict().items():
            torch.testing.assert_close(
                sharded[name],
                value,
                rtol=1e-12,
                atol=1e-12,
                msg=lambda m, config=config, name=name: f"{config} {name}: {m}",
            )
