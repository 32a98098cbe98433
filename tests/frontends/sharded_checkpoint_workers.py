"""Workers of test_sharded_checkpoint.py: train a model whose tables are sharded DTensors
(mybag.distributed.shard_embedding_bags) with a stateful optimizer, checkpoint model and
optimizer with torch.distributed.checkpoint on one world size, resume on another, and compare
against one process that never stopped. Spawned processes import this module; each rank writes
its traceback to a file so the test can say which rank failed and why."""

import datetime
import os
import traceback

import mybag
import mybag.distributed
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

PG_TIMEOUT_S = 120
NUM_EMBEDDINGS = 13  # split unevenly over 2 and 4 ranks, rows and columns alike
DIM = 5
BAGS_PER_STEP = 6
STEPS_BEFORE = 2  # trained before the checkpoint
STEPS_AFTER = 2  # trained after resuming

# The optimizers keep per-element state (Adagrad's sums, Adam's moments and step), which must
# survive the resharding. foreach=False: torch's multi-tensor update refuses a parameter group
# that mixes DTensors (the tables) with plain tensors (the head); the reference takes the same
# path so that the arithmetic matches.
OPTIMIZERS = {
    "adagrad": lambda params: torch.optim.Adagrad(params, lr=0.3, foreach=False),
    "adam": lambda params: torch.optim.Adam(params, lr=0.05, foreach=False),
}


class Model(nn.Module):
    """Two torch tables (so shard_embedding_bags has something to swap), "mean" and "sum",
    and a head."""

    def __init__(self):
        super().__init__()
        self.mean_bag = nn.EmbeddingBag(NUM_EMBEDDINGS, DIM, mode="mean", dtype=torch.float64)
        self.sum_bag = nn.EmbeddingBag(NUM_EMBEDDINGS, DIM, mode="sum", dtype=torch.float64)
        self.head = nn.Linear(2 * DIM, 1, dtype=torch.float64)

    def forward(self, input, offsets):
        return self.head(torch.cat([self.mean_bag(input, offsets),
                                    self.sum_bag(input, offsets)], dim=1))


def new_model(seed=7):
    torch.manual_seed(seed)
    return Model()


def batch(step):
    """Step ``step``'s global batch, the same on every rank (sharded tables take the whole
    batch)."""
    generator = torch.Generator().manual_seed(2000 + step)
    lengths = torch.randint(0, 5, (BAGS_PER_STEP,), generator=generator)
    input = torch.randint(0, NUM_EMBEDDINGS, (int(lengths.sum()),), generator=generator)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    return input, offsets


def train(model, optimizer, steps):
    for step in steps:
        input, offsets = batch(step)
        optimizer.zero_grad()
        model(input, offsets).pow(2).mean().backward()
        optimizer.step()


def whole_state(model):
    """The model's parameters as plain whole tensors (DTensors gathered)."""
    return {
        name: (value.full_tensor() if isinstance(value, DTensor) else value).detach().clone()
        for name, value in model.state_dict().items()
    }


def single_process(optimizer_name):
    """The reference: plain mybag.EmbeddingBag tables (no process group), trained every step."""
    model = mybag.swap_embedding_bags(new_model())
    train(model, OPTIMIZERS[optimizer_name](model.parameters()),
          range(STEPS_BEFORE + STEPS_AFTER))
    return whole_state(model)


def _mesh(world_size, rank, port):
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=PG_TIMEOUT_S),
    )
    return init_device_mesh("cpu", (world_size,))


def _reporting(label, rank, out_dir, body):
    """Runs ``body``; on failure writes this rank's traceback to ``{label}-rank{rank}.err`` and
    exits non-zero (the test reads the file), and always leaves the process group."""
    try:
        body()
    except BaseException:
        with open(os.path.join(out_dir, f"{label}-rank{rank}.err"), "w") as report:
            report.write(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def save(rank, port, out_dir, world_size, placement):
    """Trains STEPS_BEFORE steps with each optimizer and saves model and optimizer to
    ``{out_dir}/{optimizer}`` with DCP."""

    def body():
        mesh = _mesh(world_size, rank, port)
        for name in OPTIMIZERS:
            model = mybag.distributed.shard_embedding_bags(new_model(7), mesh, placement)
            optimizer = OPTIMIZERS[name](model.parameters())
            train(model, optimizer, range(STEPS_BEFORE))
            model_state, optimizer_state = get_state_dict(model, optimizer)
            dcp.save({"model": model_state, "optimizer": optimizer_state},
                     checkpoint_id=os.path.join(out_dir, name))

    _reporting(f"save{world_size}", rank, out_dir, body)


def resume(rank, port, out_dir, world_size, placement):
    """Loads each optimizer's checkpoint into a model built with other values (so a load that
    did nothing shows), trains STEPS_AFTER more steps, and on rank 0 saves the whole
    parameters to ``{out_dir}/{optimizer}-resumed{world_size}.pt``."""

    def body():
        mesh = _mesh(world_size, rank, port)
        for name in OPTIMIZERS:
            model = mybag.distributed.shard_embedding_bags(new_model(8), mesh, placement)
            optimizer = OPTIMIZERS[name](model.parameters())
            model_state, optimizer_state = get_state_dict(model, optimizer)
            state = {"model": model_state, "optimizer": optimizer_state}
            dcp.load(state, checkpoint_id=os.path.join(out_dir, name))
            set_state_dict(model, optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"])
            train(model, optimizer, range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER))
            resumed = whole_state(model)
            if rank == 0:
                torch.save(resumed, os.path.join(out_dir, f"{name}-resumed{world_size}.pt"))

    _reporting(f"resume{world_size}", rank, out_dir, body)
