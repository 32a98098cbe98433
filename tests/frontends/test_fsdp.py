"""mybag.EmbeddingBag sharded by FSDP (``fully_shard``): 2 gloo processes on loopback train the
same model as one process does on the global batch (dense gradients: FSDP has no sparse ones,
for torch's module either). The helpers are in distributed_training.py."""

import os

import distributed_training as training
import pytest
import torch
import torch.distributed as dist

CONFIGS = [("sum", False, None), ("mean", False, 0), ("max", False, None)]


def worker(rank, port, out_dir):
    from torch.distributed.fsdp import fully_shard

    training.init_process_group(rank, port)
    try:
        for index, config in enumerate(CONFIGS):
            model = training.new_model(config)
            fully_shard(model.bag)  # the table is its own FSDP unit, as for torch's module
            fully_shard(model)
            training.train(model, training.bags_of_rank(rank), model.parameters())
            # full_tensor() is a collective: every rank gathers, rank 0 saves.
            state = {name: value.full_tensor() for name, value in model.state_dict().items()}
            if rank == 0:
                torch.save(state, os.path.join(out_dir, f"config{index}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_fsdp_training_equals_one_process_on_the_global_batch(tmp_path):
    training.run_on_ranks(worker, tmp_path, "FSDP")
    training.assert_trained_like_one_process(CONFIGS, tmp_path)
