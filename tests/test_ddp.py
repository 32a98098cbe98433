"""mybag.EmbeddingBag inside DistributedDataParallel: 2 gloo processes on loopback train the same
model as one process does on the global batch, with dense and with sparse gradients.

DDP decides which parameters get sparse gradients by ``isinstance(module, nn.EmbeddingBag)``.
When mybag's module was a plain nn.Module, ``sparse=True`` failed inside DDP with
``Cannot access storage of SparseTensorImpl``.
"""

import datetime
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import mybag

WORLD_SIZE = 2
STEPS = 4
BAGS_PER_STEP = 8  # global batch; each rank trains on half
NUM_EMBEDDINGS = 30
DIM = 6
JOIN_TIMEOUT_S = 240
PG_TIMEOUT_S = 120

# (mode, sparse, padding_idx)
CONFIGS = [("mean", False, None), ("sum", True, None), ("mean", True, 0), ("max", False, None)]


class Model(nn.Module):
    def __init__(self, mode, sparse, padding_idx):
        super().__init__()
        self.bag = mybag.EmbeddingBag(
            NUM_EMBEDDINGS,
            DIM,
            mode=mode,
            sparse=sparse,
            padding_idx=padding_idx,
            dtype=torch.float64,
        )
        self.head = nn.Linear(DIM, 1, dtype=torch.float64)

    def forward(self, input, offsets):
        return self.head(self.bag(input, offsets))


def new_model(config):
    torch.manual_seed(7)
    return Model(*config)


def batch(step, bag_ids):
    """The bags ``bag_ids`` of step ``step``'s global batch, as 1-D input and offsets."""
    generator = torch.Generator().manual_seed(1000 + step)
    lengths = torch.randint(0, 5, (BAGS_PER_STEP,), generator=generator)
    bags = [torch.randint(0, NUM_EMBEDDINGS, (int(n),), generator=generator) for n in lengths]
    chosen = [bags[i] for i in bag_ids]
    offsets = torch.tensor([0] + [len(b) for b in chosen[:-1]]).cumsum(0)
    return torch.cat(chosen), offsets


def train(model, bag_ids, parameters):
    optimizer = torch.optim.SGD(parameters, lr=0.5)
    for step in range(STEPS):
        input, offsets = batch(step, bag_ids)
        optimizer.zero_grad()
        # A mean over bags: DDP averages gradients over ranks, so equal shards give the
        # gradient of the global mean.
        model(input, offsets).pow(2).mean().backward()
        optimizer.step()


def worker(rank, port, out_dir):
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
            ddp = DistributedDataParallel(model)
            train(ddp, list(range(rank, BAGS_PER_STEP, WORLD_SIZE)), ddp.parameters())
            if rank == 0:
                torch.save(model.state_dict(), os.path.join(out_dir, f"config{index}.pt"))
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.skipif(sys.platform == "win32", reason="gloo on loopback")
def test_ddp_training_equals_one_process_on_the_global_batch(tmp_path):
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
    assert not hung, f"DDP workers {hung} did not finish within {JOIN_TIMEOUT_S} s"
    assert [p.exitcode for p in processes] == [0] * WORLD_SIZE

    for index, config in enumerate(CONFIGS):
        single = new_model(config)
        train(single, list(range(BAGS_PER_STEP)), single.parameters())
        distributed = torch.load(tmp_path / f"config{index}.pt")
        initial = new_model(config).state_dict()
        for name, value in single.state_dict().items():
            assert not torch.equal(value, initial[name]), f"{config}: {name} did not train"
            torch.testing.assert_close(
                distributed[name],
                value,
                rtol=1e-12,
                atol=1e-12,
                msg=lambda m, config=config, name=name: f"{config} {name}: {m}",
            )


def test_ddp_sees_sparse_gradients_of_mybag_modules():
    # DDP's own test of which modules produce sparse gradients, through its public rule.
    assert isinstance(mybag.EmbeddingBag(3, 2, sparse=True), nn.EmbeddingBag)
