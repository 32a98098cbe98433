"""Measures what one training step of a sharded mybag table sends (docs/distributed.md).

Spawns 2 and then 4 gloo processes on 127.0.0.1 (CPU only). In each, every collective of
torch.distributed (and of its functional collectives, which DTensor uses) is wrapped to record
its name, element count and bytes, and a dispatch mode records every c10d and functional
collective op that runs (the table's source: it also sees DTensor's own collectives); then one forward and one backward of
``mybag.embedding_bag`` runs on a DTensor table for each placement (row-wise ``Shard(0)``,
column-wise ``Shard(1)``, ``Replicate()``), mode and option, and the collectives of that step
alone are printed (the set-up's, ``distribute_tensor`` included, are not counted). The same is
done for a few ``mybag.FusedEmbeddingBag`` modules sharded by ``shard_embedding_bags``, whose
backward steps the optimizer instead of leaving a gradient: they should send what the plain
op sends. The wrappers' record is checked against the dispatch mode's, so no collective goes
unseen.

    python scripts/measure_shard_communication.py [--batch 512] [--dim 64] [--rows 100000]
        [--bag 20] [--worlds 2 4] [--timeout 300]

Bytes are each rank's own contribution (the tensor it passes): an all-reduce of n elements
is "n"; an all-gather is n per rank, W * n received. docs/distributed.md turns them into
link traffic. Prints a Markdown table.
"""

import argparse
import functools
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVES = ["all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object",
               "reduce_scatter", "reduce_scatter_tensor", "broadcast", "all_to_all",
               "all_to_all_single", "scatter", "gather", "reduce", "send", "recv", "isend",
               "irecv", "barrier"]
FUNCTIONAL = ["all_reduce", "all_gather_tensor", "all_gather_tensor_autograd",
              "reduce_scatter_tensor", "all_to_all_single", "broadcast"]


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


class Recorder:
    """Wraps torch.distributed's collectives; `calls` holds (op, elements, bytes) while on."""

    def __init__(self):
        self.on = False
        self.calls = []
        self.dispatched_calls = []

    def wrap(self, module, name, label):
        original = getattr(module, name, None)
        if original is None or getattr(original, "_recorded", False):
            return

        @functools.wraps(original)
        def recorded(*args, **kwargs):
            if self.on:
                # The tensor this rank contributes: the input of all_gather(list, tensor),
                # all_gather_into_tensor(out, in) and reduce_scatter(out, list); else the first.
                if name in ("all_gather", "all_gather_into_tensor"):
                    sent = args[1]
                elif name in ("reduce_scatter", "reduce_scatter_tensor"):
                    sent = args[1]
                else:
                    sent = args[0] if args else None
                tensors = list(_tensors(sent))
                elements = sum(t.numel() for t in tensors)
                nbytes = sum(t.numel() * t.element_size() for t in tensors)
                dtypes = ",".join(sorted({str(t.dtype).replace("torch.", "") for t in tensors}))
                self.calls.append((label + name, elements, nbytes, dtypes))
            return original(*args, **kwargs)

        recorded._recorded = True
        setattr(module, name, recorded)

    def install(self):
        import torch.distributed.distributed_c10d as c10d
        import torch.distributed._functional_collectives as funcol

        for name in COLLECTIVES:
            self.wrap(dist, name, "")
            self.wrap(c10d, name, "")
        for name in FUNCTIONAL:
            self.wrap(funcol, name, "funcol.")


# The c10d ops (torch.distributed's collectives) and functional collectives (DTensor's), and
# which argument holds the tensor(s) this rank contributes.
SENT_ARGUMENT = {"allgather_": 1, "_allgather_base_": 1, "allgather_into_tensor_coalesced_": 1,
                 "reduce_scatter_": 1, "_reduce_scatter_base_": 1,
                 "reduce_scatter_tensor_coalesced_": 1, "alltoall_base_": 1, "alltoall_": 1,
                 "gather_": 1}
NOT_COLLECTIVES = {"wait_tensor", "_wrap_tensor_autograd", "barrier", "monitored_barrier_"}


def _dispatch_recorder(recorder):
    """Records every collective that runs, whoever calls it: the c10d ops behind
    torch.distributed's functions and the functional collectives DTensor calls directly."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace in ("c10d", "_c10d_functional", "_c10d_functional_autograd"):
                name = func.overloadpacket.__name__
                if name not in NOT_COLLECTIVES:
                    tensors = list(_tensors(args[SENT_ARGUMENT.get(name, 0)]))
                    recorder.dispatched_calls.append((
                        f"{func.namespace}.{name}",
                        sum(t.numel() for t in tensors),
                        sum(t.numel() * t.element_size() for t in tensors),
                        ",".join(sorted({str(t.dtype).replace("torch.", "") for t in tensors})),
                    ))
            return func(*args, **(kwargs or {}))

    return Record()


def cases():
    """(placement, mode, options label, keyword arguments)."""
    for placement in ("row", "column", "replicate"):
        for mode in ("sum", "mean", "max"):
            yield placement, mode, "-", {}
            yield placement, mode, "max_norm=1", {"max_norm": 1.0}
        yield placement, "sum", "per_sample_weights (grad)", {"psw": True}
        yield placement, "sum", "max_norm=1, norm_type=inf", {"max_norm": 1.0,
                                                              "norm_type": float("inf")}
        yield placement, "sum", "input a Shard(0) DTensor", {"dtensor_input": True}
    # FusedEmbeddingBag (sharded by shard_embedding_bags): the backward steps the optimizer on
    # each rank's rows (or columns, or copy) and should send what the plain module sends.
    yield "row", "sum", "FusedEmbeddingBag adagrad", {"fused": "adagrad"}
    yield "row", "max", "FusedEmbeddingBag adagrad", {"fused": "adagrad"}
    yield "row", "sum", "FusedEmbeddingBag rowwise_adagrad", {"fused": "rowwise_adagrad"}
    yield "row", "sum", "FusedEmbeddingBag adagrad, per_sample_weights (grad)", {
        "fused": "adagrad", "psw": True}
    yield "column", "sum", "FusedEmbeddingBag adam", {"fused": "adam"}
    yield "replicate", "sum", "FusedEmbeddingBag adagrad", {"fused": "adagrad"}


def worker(rank, world, port, args, queue):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import mybag
    from mybag.distributed import shard_embedding_bags
    from mybag.distributed._layout import PLACEMENTS

    recorder = Recorder()
    recorder.install()
    mesh = init_device_mesh("cpu", (world,))
    B, D, E, L = args.batch, args.dim, args.rows, args.bag
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(E, D, generator=generator)
    # A 2-D input (B bags of L entries): every bag the same length, so it also splits as a
    # Shard(0) DTensor; plain, it is the same whole batch on every rank.
    input = torch.randint(0, E, (B, L), generator=generator)
    weights = torch.rand(B, L, generator=generator)
    rows = []
    for placement, mode, label, options in cases():
        module = None
        if options.get("fused"):
            module = mybag.FusedEmbeddingBag(E, D, mode=mode, optimizer=options["fused"],
                                             _weight=table.clone())
            module = shard_embedding_bags(module, mesh, placement)
            weight = module.weight
        else:
            weight = torch.nn.Parameter(
                distribute_tensor(table.clone(), mesh, [PLACEMENTS[placement]]))
        psw = weights.clone().requires_grad_() if options.get("psw") else None
        step_input = input
        if options.get("dtensor_input"):
            step_input = distribute_tensor(input, mesh, [Shard(0)])
        dist.barrier()
        recorder.calls, recorder.dispatched_calls = [], []
        recorder.on = True
        start = time.perf_counter()
        with _dispatch_recorder(recorder):
            if module is not None:
                output = module(step_input, per_sample_weights=psw)
            else:
                output = mybag.embedding_bag(
                    step_input, weight, mode=mode, per_sample_weights=psw,
                    max_norm=options.get("max_norm"), norm_type=options.get("norm_type", 2.0))
            forward_calls = len(recorder.dispatched_calls)
            if isinstance(output, torch.distributed.tensor.DTensor):
                output = output.to_local()
            output.sum().backward()
        seconds = time.perf_counter() - start
        recorder.on = False
        calls = list(recorder.dispatched_calls)
        local = weight.to_local()
        grad = weight.grad.to_local() if weight.grad is not None else None
        state = None
        if module is not None:
            # The fused step leaves no gradient; what each rank holds of the optimizer state.
            held = []
            for name in ("sum", "exp_avg", "exp_avg_sq"):
                buffer = module._buffers[name]
                if buffer is not None:
                    shape = " x ".join(f"{n:,}" for n in buffer.to_local().shape)
                    held.append(f"{name} {shape} {buffer.placements[0]}")
            state = ", ".join(held) + f"; step {int(module.step)}"
        rows.append({
            "placement": placement, "mode": mode, "options": label,
            "forward": calls[:forward_calls], "backward": calls[forward_calls:],
            "wrapped": list(recorder.calls),
            "shard": tuple(local.shape), "grad": tuple(grad.shape) if grad is not None else None,
            "grad_placement": str(weight.grad.placements[0]) if weight.grad is not None else None,
            "state": state,
            "seconds": seconds,
        })
    dist.barrier()
    if rank == 0:
        queue.put(rows)
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def describe(calls):
    if not calls:
        return "none"
    return "; ".join(f"{op} {elements:,} {dtypes} ({nbytes:,} B)"
                     for op, elements, nbytes, dtypes in calls)


def run(world, args):
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    spawned = mp.start_processes(worker, args=(world, free_port(), args, queue), nprocs=world,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + args.timeout
    while not spawned.join(timeout=1):
        if time.monotonic() > deadline:
            for process in spawned.processes:
                if process.is_alive():
                    process.kill()
            raise SystemExit(f"world {world}: no result within {args.timeout} s")
    return queue.get()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--bag", type=int, default=20, help="entries per bag")
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, gloo on 127.0.0.1, {os.cpu_count()} CPUs; "
          f"B={args.batch} bags of L={args.bag}, table E={args.rows} x D={args.dim} float32")
    escaped = []
    for world in args.worlds:
        rows = run(world, args)
        print(f"\n### W = {world}\n")
        print("| placement | mode | options | forward | backward | shard held "
              "| grad (or fused state) held |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            if r["state"] is not None:
                held = f"no grad; {r['state']}"
            elif r["grad"] is not None:
                held = f"{r['grad'][0]:,} x {r['grad'][1]} {r['grad_placement']}"
            else:
                held = "none"
            print(f"| {r['placement']} | {r['mode']} | {r['options']} | {describe(r['forward'])} "
                  f"| {describe(r['backward'])} | {r['shard'][0]:,} x {r['shard'][1]} "
                  f"| {held} |")
            # Every torch.distributed call the wrappers saw must be among the c10d ops the
            # dispatch mode recorded (it also sees DTensor's functional collectives).
            dispatched = [(op.split(".")[-1].strip("_"), n, nbytes)
                          for op, n, nbytes, _ in r["forward"] + r["backward"]]
            for op, n, nbytes, _ in r["wrapped"]:
                if (n, nbytes) not in [(m, b) for _, m, b in dispatched]:
                    escaped.append((world, r["placement"], r["mode"], r["options"], op, n))
    if escaped:
        print("\ntorch.distributed calls the dispatch mode did not record:")
        for item in escaped:
            print("  ", item)
    else:
        print("\nEvery torch.distributed call the wrappers saw was recorded by the dispatch mode.")


if __name__ == "__main__":
    sys.exit(main())
