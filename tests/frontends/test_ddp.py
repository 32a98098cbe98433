"""mybag.EmbeddingBag inside DistributedDataParallel: 2 gloo processes on loopback train the same
model as one process does on the global batch, with dense and with sparse gradients.

DDP decides which parameters get sparse gradients by ``isinstance(module, nn.EmbeddingBag)``.
When mybag's module was a plain nn.Module, ``sparse=True`` failed inside DDP with
``Cannot access storage of SparseTensorImpl``.
"""

import os
import sys

import distributed_training as training
import mybag
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# (mode, sparse, padding_idx)
CONFIGS = [("mean", False, None), ("sum", True, None), ("mean", True, 0), ("max", False, None)]


def worker(rank, port, out_dir):
    training.init_process_group(rank, port)
    try:
        for index, config in enumerate(CONFIGS):
            model = training.new_model(config)
            ddp = DistributedDataParallel(model)
            training.train(ddp, training.bags_of_rank(rank), ddp.parameters())
            if rank == 0:
                torch.save(model.state_dict(), os.path.join(out_dir, f"config{index}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.skipif(sys.platform == "win32", reason="gloo on loopback")
def test_ddp_training_equals_one_process_on_the_global_batch(tmp_path):
    training.run_on_ranks(worker, tmp_path, "DDP")
    training.assert_trained_like_one_process(CONFIGS, tmp_path)


def test_ddp_sees_sparse_gradients_of_mybag_modules():
    # DDP's own test of which modules produce sparse gradients, through its public rule.
    assert isinstance(mybag.EmbeddingBag(3, 2, sparse=True), nn.EmbeddingBag)
