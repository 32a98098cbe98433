"""Training a model whose embedding tables are split row-wise over the ranks.

Run it with torchrun, for example on two CPU processes::

    torchrun --nproc-per-node 2 examples/sharded_training.py [CHECKPOINT_DIR]

The model is plain PyTorch (``nn.EmbeddingBag`` tables and an MLP).
``mybag.distributed.shard_embedding_bags`` swaps the tables for mybag's and splits each one
row-wise over the ranks (a DTensor placed ``Shard(0)``), so every rank stores and updates only
its rows. Every rank feeds the same whole batch and gets the whole output, so the training
loop is the usual one. At the end, model and optimizer are saved with
``torch.distributed.checkpoint`` into CHECKPOINT_DIR (a new temporary directory if none is
given); such a checkpoint can be loaded again on any number of ranks.

It uses NCCL and one GPU per rank when there are enough GPUs, gloo on the CPU otherwise.
"""

import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict
from torch.distributed.device_mesh import init_device_mesh

import mybag.distributed

NUM_USERS = 50
NUM_ITEMS = 37  # not a multiple of the world size: the last rank holds fewer rows
DIM = 8
BATCH = 16
STEPS = 5


class Recommender(nn.Module):
    """Predicts whether a user clicks an item from the user's past items and the item's tags."""

    def __init__(self):
        super().__init__()
        self.history = nn.EmbeddingBag(NUM_ITEMS, DIM, mode="mean")
        self.user = nn.EmbeddingBag(NUM_USERS, DIM, mode="sum")
        self.mlp = nn.Sequential(nn.Linear(2 * DIM, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, users, history, history_offsets):
        pooled = torch.cat([self.user(users), self.history(history, history_offsets)], dim=1)
        return self.mlp(pooled).squeeze(1)


def batch(step, device):
    """Step ``step``'s batch. Every rank builds the same one (same seed): sharded tables take
    the whole batch on every rank."""
    generator = torch.Generator().manual_seed(step)
    users = torch.randint(0, NUM_USERS, (BATCH, 1), generator=generator)
    lengths = torch.randint(1, 6, (BATCH,), generator=generator)
    history = torch.randint(0, NUM_ITEMS, (int(lengths.sum()),), generator=generator)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    clicks = (users.squeeze(1) % 2).float()  # something the user table can learn
    return [t.to(device) for t in (users, history, offsets, clicks)]


def main():
    checkpoint_dir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="mybag-")
    world_size = int(os.environ["WORLD_SIZE"])
    use_cuda = torch.cuda.is_available() and world_size <= torch.cuda.device_count()
    if use_cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    device = "cuda" if use_cuda else "cpu"
    mesh = init_device_mesh(device, (world_size,))
    rank = dist.get_rank()

    torch.manual_seed(0)  # rank 0's tables are the ones distributed; the MLP must match too
    model = Recommender().to(device)
    model = mybag.distributed.shard_embedding_bags(model, mesh, "row")
    # Built after sharding: the optimizer must hold the new (DTensor) table parameters.
    # foreach=False: torch's multi-tensor update (the default on GPUs) refuses a parameter
    # group that mixes DTensors (the tables) with plain tensors (the MLP).
    optimizer = torch.optim.Adagrad(model.parameters(), lr=0.1, foreach=False)

    for step in range(STEPS):
        users, history, offsets, clicks = batch(step, device)
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(
            model(users, history, offsets), clicks)
        loss.backward()
        optimizer.step()
        if rank == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)

    # Every rank takes part in gathering the row counts and in saving.
    for name in ("user", "history"):
        table = getattr(model, name).weight
        rows = [0] * world_size
        dist.all_gather_object(rows, table.to_local().shape[0])
        if rank == 0:
            print(f"table {name}: {table.shape[0]} rows, held per rank: {rows}", flush=True)

    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=checkpoint_dir)
    if rank == 0:
        print(f"checkpoint saved to {checkpoint_dir}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
