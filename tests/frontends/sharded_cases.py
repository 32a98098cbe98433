"""The cases of test_sharded.py, run on every rank of a gloo group: each compares a sharded
table (row-wise, column-wise, replicated) against one process holding the whole table, on the
same batch, forward and backward. Spawned workers import this module; failures are collected
per case, written to a file per rank and reported by the test."""

import datetime
import itertools
import os
import traceback

import mybag
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

PG_TIMEOUT_S = 120
NUM_EMBEDDINGS = 13  # split unevenly over 2, 3 and 4 ranks
DIM = 5  # columns too
PLACEMENTS = {"row": Shard(0), "column": Shard(1), "replicate": Replicate()}


def init(rank, world_size, port):
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=PG_TIMEOUT_S),
    )
    return init_device_mesh("cpu", (world_size,))


def table(seed, ties=False, nan=False):
    generator = torch.Generator().manual_seed(seed)
    if ties:
        # Few distinct values: equal maxima in rows held by different ranks.
        weight = torch.randint(-2, 3, (NUM_EMBEDDINGS, DIM), generator=generator).double()
    else:
        weight = torch.randn(NUM_EMBEDDINGS, DIM, generator=generator, dtype=torch.float64)
    if nan:
        weight[2, 1] = float("nan")
        weight[NUM_EMBEDDINGS - 2, 3] = float("nan")
    return weight


def batch(seed, two_d, include_last_offset, index_dtype=torch.int64):
    generator = torch.Generator().manual_seed(seed)
    if two_d:
        return torch.randint(0, NUM_EMBEDDINGS, (6, 4), generator=generator).to(index_dtype), None
    lengths = torch.tensor([3, 0, 5, 1, 4, 2, 0, 6])
    input = torch.randint(0, NUM_EMBEDDINGS, (int(lengths.sum()),), generator=generator)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    if not include_last_offset:
        offsets = offsets[:-1]
    return input.to(index_dtype), offsets.to(index_dtype)


def run_case(mesh, placement, weight, input, offsets, options, psw_requires_grad=False):
    """Forward and backward on the sharded table and on the whole one: outputs, weight
    gradients, per_sample_weights gradients and (max_norm) renormalized tables must agree."""
    generator = torch.Generator().manual_seed(99)
    psw = None
    if options.get("per_sample_weights"):
        psw = torch.rand(input.shape, generator=generator, dtype=weight.dtype)
    kwargs = {k: v for k, v in options.items() if k != "per_sample_weights"}

    single = weight.clone().requires_grad_()
    single_psw = None if psw is None else psw.clone().requires_grad_(psw_requires_grad)
    expected = mybag.embedding_bag(input, single, offsets, per_sample_weights=single_psw, **kwargs)
    projection = torch.randn(expected.shape, generator=generator, dtype=weight.dtype)
    (expected.nan_to_num() * projection).sum().backward()

    sharded = torch.nn.Parameter(distribute_tensor(weight.clone(), mesh, [PLACEMENTS[placement]]))
    sharded_psw = None if psw is None else psw.clone().requires_grad_(psw_requires_grad)
    output = mybag.embedding_bag(input, sharded, offsets, per_sample_weights=sharded_psw, **kwargs)
    assert not isinstance(output, DTensor)
    (output.nan_to_num() * projection).sum().backward()

    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12, equal_nan=True)
    grad = sharded.grad
    assert isinstance(grad, DTensor) and grad.placements == sharded.placements, grad
    assert grad.to_local().shape == sharded.to_local().shape
    torch.testing.assert_close(grad.full_tensor(), single.grad, rtol=1e-12, atol=1e-12)
    if kwargs.get("max_norm") is not None:
        torch.testing.assert_close(sharded.full_tensor(), single.detach(), rtol=1e-12, atol=1e-12,
                                   equal_nan=True)
    if psw_requires_grad:
        torch.testing.assert_close(sharded_psw.grad, single_psw.grad, rtol=1e-12, atol=1e-12)


def option_cases():
    """(name, options, two_d, include_last_offset) over the modes and options."""
    for mode, two_d, last in itertools.product(["sum", "mean", "max"], [False, True], [False, True]):
        if two_d and last:
            continue
        yield f"{mode} 2d={two_d} ilo={last}", {"mode": mode}, two_d, last
        yield f"{mode} padding 2d={two_d} ilo={last}", {"mode": mode, "padding_idx": 4}, two_d, last
        yield (f"{mode} max_norm 2d={two_d} ilo={last}", {"mode": mode, "max_norm": 1.5, "padding_idx": -1},
               two_d, last)
        if mode != "max":
            yield (f"{mode} scale_grad_by_freq 2d={two_d} ilo={last}",
                   {"mode": mode, "scale_grad_by_freq": True, "padding_idx": 0}, two_d, last)
    yield "sum per_sample_weights", {"mode": "sum", "per_sample_weights": True}, False, False
    yield ("sum per_sample_weights padding 2d", {"mode": "sum", "per_sample_weights": True,
                                                  "padding_idx": 3}, True, False)
    for p in [1.0, 0.0, float("inf"), float("-inf"), 3.0]:
        yield f"max_norm norm_type={p}", {"mode": "sum", "max_norm": 0.7, "norm_type": p}, False, False


def all_cases(mesh):
    """Yields (name, thunk) for every case."""
    for placement in PLACEMENTS:
        for name, options, two_d, last in option_cases():
            def case(placement=placement, options=options, two_d=two_d, last=last):
                input, offsets = batch(5, two_d, last)
                run_case(mesh, placement, table(3), input, offsets,
                         dict(options, include_last_offset=last),
                         psw_requires_grad=bool(options.get("per_sample_weights")))
            yield f"{placement}: {name}", case
        for ties, nan in [(True, False), (False, True), (True, True)]:
            def case(placement=placement, ties=ties, nan=nan):
                for seed in range(4):
                    input, offsets = batch(seed, False, False)
                    run_case(mesh, placement, table(seed, ties, nan), input, offsets,
                             {"mode": "max"})
            yield f"{placement}: max ties={ties} nan={nan}", case
        def int32_case(placement=placement):
            input, offsets = batch(8, False, True, torch.int32)
            run_case(mesh, placement, table(1), input, offsets.to(torch.int16),
                     {"mode": "mean", "include_last_offset": True})
        yield f"{placement}: int32 input, int16 offsets", int32_case


def run_all(rank, port, out_dir, world_size):
    mesh = init(rank, world_size, port)
    failures = []
    count = 0
    for name, case in all_cases(mesh):
        count += 1
        try:
            case()
        except Exception:  # reported per case; the other cases still run
            failures.append(f"[{name}]\n{traceback.format_exc()}")
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as report:
        report.write(f"{count} cases\n" + "\n".join(failures))
    dist.destroy_process_group()
