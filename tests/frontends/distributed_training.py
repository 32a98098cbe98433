"""What the distributed tests (test_ddp.py, test_fsdp.py) share: a small model around
mybag.EmbeddingBag, its data and training loop, and running workers in 2 gloo processes on
loopback, bounded in time, compared against one process on the global batch."""

import datetime
import socket

import mybag
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD_SIZE = 2
STEPS = 4
BAGS_PER_STEP = 8  # global batch; each rank trains on half
NUM_EMBEDDINGS = 30
DIM = 6
JOIN_TIMEOUT_S = 240
PG_TIMEOUT_S = 120

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


def bags_of_rank(rank):
    """The bags of each step's global batch that ``rank`` trains on."""
    return list(range(rank, BAGS_PER_STEP, WORLD_SIZE))


def train(model, bag_ids, parameters):
    optimizer = torch.optim.SGD(parameters, lr=0.5)
    for step in range(STEPS):
        input, offsets = batch(step, bag_ids)
        optimizer.zero_grad()
        # A mean over bags: DDP averages gradients over ranks, so equal shards give the
        # gradient of the global mean.
        model(input, offsets).pow(2).mean().backward()
        optimizer.step()


def init_process_group(rank, port):
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=PG_TIMEOUT_S),
    )


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_on_ranks(worker, out_dir, label, world_size=WORLD_SIZE):
    """Runs ``worker(rank, port, out_dir)`` in ``world_size`` spawned processes; kills them and
    fails if they do not finish within JOIN_TIMEOUT_S."""
    context = mp.get_context("spawn")
    port = free_port()
    processes = [
        context.Process(target=worker, args=(rank, port, str(out_dir)))
        for rank in range(world_size)
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
    assert not hung, f"{label} workers {hung} did not finish within {JOIN_TIMEOUT_S} s"
    assert [p.exitcode for p in processes] == [0] * world_size


def assert_trained_like_one_process(configs, out_dir):
    """Each config's saved state (rank 0's, config{i}.pt) equals one process trained on the
    global batch, and training changed it."""
    for index, config in enumerate(configs):
        single = new_model(config)
        train(single, list(range(BAGS_PER_STEP)), single.parameters())
        distributed = torch.load(out_dir / f"config{index}.pt")
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
