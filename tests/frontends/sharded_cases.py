"""The cases of test_sharded.py, run on every rank of a gloo group: each compares a sharded
table (row-wise, column-wise, replicated) against one process holding the whole table, on the
same batch, forward and backward. Spawned workers import this module; failures are collected
per case, written to a file per rank and reported by the test."""

import datetime
import itertools
import os
import traceback

import mybag
import mybag.distributed
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

PG_TIMEOUT_S = 120
NUM_EMBEDDINGS = 13  # split unevenly over 2, 3 and 4 ranks
DIM = 5  # columns too
PLACEMENTS = {"row": Shard(0), "column": Shard(1), "replicate": Replicate()}


def init(rank, world_size, port, device="cpu"):
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl" if device == "cuda" else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=PG_TIMEOUT_S),
    )
    return init_device_mesh(device, (world_size,))


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
    if include_last_offset:
        # The final offset short of the end: the last bag still runs to the end (spec §2).
        offsets[-1] -= 2
    else:
        offsets = offsets[:-1]
    return input.to(index_dtype), offsets.to(index_dtype)


def run_case(mesh, placement, weight, input, offsets, options, psw_requires_grad=False):
    """Forward and backward on the sharded table and on the whole one: outputs, weight
    gradients, per_sample_weights gradients and (max_norm) renormalized tables must agree."""
    generator = torch.Generator().manual_seed(99)
    psw = None
    if options.get("per_sample_weights"):
        psw = torch.rand(input.shape, generator=generator, dtype=weight.dtype).to(weight.device)
    kwargs = {k: v for k, v in options.items() if k != "per_sample_weights"}

    single = weight.clone().requires_grad_()
    single_psw = None if psw is None else psw.clone().requires_grad_(psw_requires_grad)
    expected = mybag.embedding_bag(input, single, offsets, per_sample_weights=single_psw, **kwargs)
    projection = torch.randn(expected.shape, generator=generator, dtype=weight.dtype).to(
        weight.device)
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
    forms = itertools.product(["sum", "mean", "max"], [False, True], [False, True])
    for mode, two_d, last in forms:
        if two_d and last:
            continue
        yield f"{mode} 2d={two_d} ilo={last}", {"mode": mode}, two_d, last
        yield (f"{mode} padding 2d={two_d} ilo={last}", {"mode": mode, "padding_idx": 4}, two_d,
               last)
        yield (f"{mode} max_norm 2d={two_d} ilo={last}",
               {"mode": mode, "max_norm": 1.5, "padding_idx": -1}, two_d, last)
        if mode != "max":
            yield (f"{mode} scale_grad_by_freq 2d={two_d} ilo={last}",
                   {"mode": mode, "scale_grad_by_freq": True, "padding_idx": 0}, two_d, last)
    yield "sum per_sample_weights", {"mode": "sum", "per_sample_weights": True}, False, False
    yield ("sum per_sample_weights padding 2d", {"mode": "sum", "per_sample_weights": True,
                                                  "padding_idx": 3}, True, False)
    for p in [1.0, 0.0, float("inf"), float("-inf"), 3.0]:
        yield (f"max_norm norm_type={p}", {"mode": "sum", "max_norm": 0.7, "norm_type": p}, False,
               False)


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


def expect_error(kind, call):
    try:
        call()
    except kind as error:
        return str(error)
    raise AssertionError(f"expected {kind.__name__}")


def error_cases(mesh):
    """Bad calls on sharded tables raise what the unsharded op raises, and change nothing."""
    input, offsets = batch(5, False, False)
    for placement in PLACEMENTS:
        def sparse(placement=placement):
            weight = distribute_tensor(table(3), mesh, [PLACEMENTS[placement]])
            message = expect_error(ValueError, lambda: mybag.embedding_bag(
                input, weight, offsets, mode="sum", sparse=True))
            assert "sparse=True" in message and "DTensor" in message, message
        yield f"{placement}: sparse refused", sparse

        def bad_values(placement=placement):
            whole = table(3)
            for bad_input, bad_offsets, kind in [
                (torch.tensor([0, NUM_EMBEDDINGS, 1]), torch.tensor([0, 2]), IndexError),
                (torch.tensor([0, -1, 1]), torch.tensor([0, 2]), IndexError),
                (torch.tensor([0, 1, 2]), torch.tensor([0, 3, 2]), RuntimeError),
                (torch.tensor([0, 1, 2]), torch.tensor([1, 2]), RuntimeError),
                (torch.tensor([0, 1, 2]), torch.tensor([0, 4]), RuntimeError),
            ]:
                expected = expect_error(kind, lambda: mybag.embedding_bag(
                    bad_input, whole.clone(), bad_offsets, max_norm=0.1))
                weight = distribute_tensor(whole.clone(), mesh, [PLACEMENTS[placement]])
                message = expect_error(kind, lambda: mybag.embedding_bag(
                    bad_input, weight, bad_offsets, max_norm=0.1))
                assert message == expected, (message, expected)
                # max_norm would have scaled the rows: a failed call writes nothing.
                assert torch.equal(weight.full_tensor(), whole)
        yield f"{placement}: bad values raise as unsharded, nothing written", bad_values

        def bad_options(placement=placement):
            whole = table(3)
            weight = distribute_tensor(whole, mesh, [PLACEMENTS[placement]])
            for kwargs, kind in [
                ({"mode": "median"}, ValueError),
                ({"mode": "mean", "per_sample_weights": torch.ones(input.shape,
                                                                   dtype=torch.float64)},
                 NotImplementedError),
                ({"mode": "max", "scale_grad_by_freq": True}, ValueError),
                ({"padding_idx": NUM_EMBEDDINGS}, RuntimeError),
            ]:
                expected = expect_error(kind, lambda: mybag.embedding_bag(
                    input, whole, offsets, **kwargs))
                message = expect_error(kind, lambda: mybag.embedding_bag(
                    input, weight, offsets, **kwargs))
                assert message == expected, (message, expected)
        yield f"{placement}: bad options raise as unsharded", bad_options

    def partial_placement():
        from torch.distributed.tensor import Partial

        weight = DTensor.from_local(table(3), mesh, [Partial()])
        message = expect_error(ValueError, lambda: mybag.embedding_bag(input, weight, offsets))
        assert "Shard(0)" in message and "Partial" in message, message
    yield "partial placement refused", partial_placement


class CollectiveLog:
    """Records the collectives mybag.distributed issues (name and elements per call)."""

    def __init__(self):
        self.calls = []

    def __enter__(self):
        self.saved = {name: getattr(dist, name) for name in ("all_reduce", "all_gather")}
        for name, function in self.saved.items():
            def logged(tensor_or_list, *args, name=name, function=function, **kwargs):
                tensor = args[0] if name == "all_gather" else tensor_or_list
                self.calls.append((name, tensor.numel()))
                return function(tensor_or_list, *args, **kwargs)
            setattr(dist, name, logged)
        return self

    def __exit__(self, *exc):
        for name, function in self.saved.items():
            setattr(dist, name, function)


def communication_cases(mesh):
    """The collectives per forward + backward are the fewest each placement needs, none of them
    of the table's size: row-wise sum and mean one all-reduce of (B, D); max an all-reduce of
    (2, B, D) and one of (B, D), whatever the number of ranks; column-wise one all-gather of
    (B, widest block); replicated none. A per_sample_weights gradient adds one all-reduce of
    (N,)."""
    world = mesh.size()
    input, offsets = batch(5, False, False)
    bags = offsets.numel()
    widest = -(-DIM // world)
    expected = {
        ("row", "sum", False): [("all_reduce", bags * DIM)],
        ("row", "mean", False): [("all_reduce", bags * DIM)],
        ("row", "max", False): [("all_reduce", 2 * bags * DIM), ("all_reduce", bags * DIM)],
        ("row", "sum", True): [("all_reduce", bags * DIM), ("all_reduce", input.numel())],
        ("column", "sum", False): [("all_gather", bags * widest)],
        ("column", "max", False): [("all_gather", bags * widest)],
        ("column", "sum", True): [("all_gather", bags * widest), ("all_reduce", input.numel())],
        ("replicate", "mean", False): [],
        ("replicate", "sum", True): [],
    }
    for (placement, mode, psw), calls in expected.items():
        def case(placement=placement, mode=mode, psw=psw, calls=calls):
            weight = torch.nn.Parameter(distribute_tensor(table(3), mesh,
                                                          [PLACEMENTS[placement]]))
            weights = torch.rand(input.shape, dtype=torch.float64, requires_grad=True) if psw \
                else None
            with CollectiveLog() as log:
                output = mybag.embedding_bag(input, weight, offsets, mode=mode,
                                             per_sample_weights=weights)
                output.sum().backward()
            assert log.calls == calls, (log.calls, calls)
            if placement == "row":
                first, rows = mybag.distributed.shard_rows(NUM_EMBEDDINGS, world, mesh.get_rank())
                assert weight.to_local().shape == (rows, DIM)
                assert weight.grad.to_local().shape == (rows, DIM)
        yield f"{placement} {mode} psw={psw}: collectives", case


def dtensor_input_cases(mesh):
    """Inputs given as DTensors (replicated, or a 2-D batch sharded by bags) are gathered; the
    output is then a replicated DTensor, and gradients flow to a DTensor per_sample_weights."""
    for placement in PLACEMENTS:
        def case(placement=placement):
            input, _ = batch(5, True, False)
            psw = torch.rand(input.shape, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(4))
            single = table(3).requires_grad_()
            single_psw = psw.clone().requires_grad_()
            expected = mybag.embedding_bag(input, single, mode="sum",
                                           per_sample_weights=single_psw)
            expected.sum().backward()
            weight = torch.nn.Parameter(distribute_tensor(table(3), mesh,
                                                          [PLACEMENTS[placement]]))
            sharded_input = distribute_tensor(input, mesh, [Shard(0)])
            sharded_psw = distribute_tensor(psw, mesh, [Replicate()]).requires_grad_()
            output = mybag.embedding_bag(sharded_input, weight, mode="sum",
                                         per_sample_weights=sharded_psw)
            assert isinstance(output, DTensor) and output.placements == (Replicate(),)
            output.to_local().sum().backward()
            torch.testing.assert_close(output.full_tensor(), expected, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(weight.grad.full_tensor(), single.grad, rtol=1e-12,
                                       atol=1e-12)
            torch.testing.assert_close(sharded_psw.grad.full_tensor(), single_psw.grad,
                                       rtol=1e-12, atol=1e-12)
        yield f"{placement}: DTensor inputs", case


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(11)
        self.torch_bag = torch.nn.EmbeddingBag(NUM_EMBEDDINGS, DIM, mode="sum",
                                               dtype=torch.float64)
        self.mybag_bag = mybag.EmbeddingBag(NUM_EMBEDDINGS + 4, DIM, mode="max",
                                            dtype=torch.float64)
        self.head = torch.nn.Linear(2 * DIM, 1, dtype=torch.float64)

    def forward(self, input, offsets):
        bags = torch.cat([self.torch_bag(input, offsets), self.mybag_bag(input + 4, offsets)], 1)
        return self.head(bags)


def train(model, optimizer, steps=3):
    for step in range(steps):
        input, offsets = batch(20 + step, False, False)
        optimizer.zero_grad()
        model(input, offsets).pow(2).mean().backward()
        optimizer.step()


def training_cases(mesh):
    """shard_embedding_bags, then a torch optimizer, trains as one process does."""
    optimizers = {
        "SGD": lambda p: torch.optim.SGD(p, lr=0.3),
        "Adagrad": lambda p: torch.optim.Adagrad(p, lr=0.3),
        "Adam": lambda p: torch.optim.Adam(p, lr=0.1),
    }
    for placement, name in itertools.product(PLACEMENTS, optimizers):
        def case(placement=placement, name=name):
            single = Model()
            train(single, optimizers[name](single.parameters()))
            model = mybag.distributed.shard_embedding_bags(Model(), mesh, placement)
            assert isinstance(model.torch_bag, mybag.EmbeddingBag)
            assert model.torch_bag.weight.placements == (PLACEMENTS[placement],)
            train(model, optimizers[name](model.parameters()))
            initial = Model()
            for (key, value), start in zip(model.state_dict().items(),
                                           initial.state_dict().values()):
                whole = value.full_tensor() if isinstance(value, DTensor) else value
                torch.testing.assert_close(whole, single.state_dict()[key], rtol=1e-10,
                                           atol=1e-12, msg=lambda m, key=key: f"{key}: {m}")
                assert not torch.equal(whole, start), f"{key} did not train"
        yield f"{placement}: shard_embedding_bags trains with {name}", case

    def refuses():
        sparse = torch.nn.Sequential(torch.nn.EmbeddingBag(4, 2, sparse=True))
        message = expect_error(ValueError, lambda: mybag.distributed.shard_embedding_bags(
            sparse, mesh, "row"))
        assert "sparse=True" in message, message
        message = expect_error(ValueError, lambda: mybag.distributed.shard_embedding_bags(
            Model(), mesh, "diagonal"))
        assert "diagonal" in message, message
    yield "shard_embedding_bags refuses sparse tables and unknown placements", refuses


def fused_module(mode, optimizer, options):
    module = mybag.FusedEmbeddingBag(NUM_EMBEDDINGS, DIM, mode=mode, optimizer=optimizer, lr=0.2,
                                     dtype=torch.float64, **options)
    with torch.no_grad():
        module.weight.copy_(table(3))
    return module


def train_fused(module, two_d, psw_requires_grad):
    """Three steps; returns the per_sample_weights gradients."""
    grads = []
    for step in range(3):
        input, offsets = batch(30 + step, two_d, False)
        generator = torch.Generator().manual_seed(step)
        psw = None
        if psw_requires_grad:
            psw = torch.rand(input.shape, generator=generator, dtype=torch.float64,
                             requires_grad=True)
        output = module(input, offsets, per_sample_weights=psw)
        projection = torch.randn(output.shape, generator=generator, dtype=torch.float64)
        (output * projection).sum().backward()
        if psw is not None:
            grads.append(psw.grad)
    return grads


def fused_cases(mesh):
    """FusedEmbeddingBag with a sharded table and state: each rank steps its own rows (or
    columns), and the table, the state and the step equal one process's after three steps."""
    optimizers = ["sgd", "adagrad", "rowwise_adagrad", "adam"]
    variants = [("sum", {}, False, True), ("mean", {"padding_idx": 2}, True, False),
                ("max", {"max_norm": 1.2}, False, False),
                ("mean", {"scale_grad_by_freq": True, "max_norm": 1.0}, False, False)]
    for placement, optimizer in itertools.product(PLACEMENTS, optimizers):
        if placement == "column" and optimizer == "rowwise_adagrad":
            continue
        def case(placement=placement, optimizer=optimizer):
            for mode, options, two_d, psw in variants:
                single = fused_module(mode, optimizer, options)
                single_grads = train_fused(single, two_d, psw)
                sharded = mybag.distributed.shard_embedding_bags(
                    fused_module(mode, optimizer, options), mesh, placement)
                assert sharded.weight.placements == (PLACEMENTS[placement],)
                sharded_grads = train_fused(sharded, two_d, psw)
                assert sharded.weight.grad is None
                assert int(sharded.step) == int(single.step) == 3
                for name, expected in single.state_dict().items():
                    value = sharded.state_dict()[name]
                    if not isinstance(expected, torch.Tensor):  # the optimizer's settings
                        assert value == expected, name
                        continue
                    if isinstance(value, DTensor):
                        assert value.placements == (PLACEMENTS[placement],), name
                        value = value.full_tensor()
                    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12,
                                               msg=lambda m, n=name: f"{mode} {n}: {m}")
                for got, want in zip(sharded_grads, single_grads, strict=True):
                    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
                assert not torch.equal(single.weight.detach(), table(3))
        yield f"{placement}: FusedEmbeddingBag {optimizer}", case

    def refuses():
        module = fused_module("sum", "rowwise_adagrad", {})
        message = expect_error(ValueError, lambda: mybag.distributed.shard_embedding_bags(
            module, mesh, "column"))
        assert "rowwise_adagrad" in message, message
    yield "column-wise rowwise_adagrad refused", refuses


def cuda_cases(mesh):
    """The option cases and the max ties on CUDA tensors (NCCL): the shard ops are written in
    ATen operations and the unsharded CUDA kernels, so the same code serves the GPU."""
    for placement in PLACEMENTS:
        for name, options, two_d, last in option_cases():
            def case(placement=placement, options=options, two_d=two_d, last=last):
                input, offsets = batch(5, two_d, last)
                run_case(mesh, placement, table(3).cuda(), input.cuda(),
                         None if offsets is None else offsets.cuda(),
                         dict(options, include_last_offset=last),
                         psw_requires_grad=bool(options.get("per_sample_weights")))
            yield f"cuda {placement}: {name}", case
        def ties(placement=placement):
            for seed in range(3):
                input, offsets = batch(seed, False, False)
                run_case(mesh, placement, table(seed, True, True).cuda(), input.cuda(),
                         offsets.cuda(), {"mode": "max"})
        yield f"cuda {placement}: max ties and NaN", ties


def run_cuda(rank, port, out_dir, world_size):
    mesh = init(rank, world_size, port, "cuda")
    report(rank, out_dir, cuda_cases(mesh))


def report(rank, out_dir, cases):
    """Runs every case, writes the failures (and the count) to rank{rank}.txt."""
    failures = []
    count = 0
    for name, case in cases:
        count += 1
        try:
            case()
        except Exception:  # reported per case; the other cases still run
            failures.append(f"[{name}]\n{traceback.format_exc()}")
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as file:
        file.write(f"{count} cases\n" + "\n".join(failures))
    dist.destroy_process_group()


def meta_cases(mesh):
    """Tables built on the meta device are never materialized whole: each rank draws its part
    (the same on every run, a zero padding row, parts that differ), a FusedEmbeddingBag's state
    is made in place, and the sharded model then computes and trains as one process holding the
    gathered table."""
    def build(placement):
        torch.manual_seed(5)
        with torch.device("meta"):
            model = torch.nn.Sequential(
                torch.nn.EmbeddingBag(NUM_EMBEDDINGS, DIM, mode="sum", padding_idx=3,
                                      dtype=torch.float64),
                mybag.FusedEmbeddingBag(NUM_EMBEDDINGS, DIM, optimizer="adagrad", lr=0.2,
                                        initial_accumulator_value=0.1, dtype=torch.float64))
        return mybag.distributed.shard_embedding_bags(model, mesh, placement)

    for placement in PLACEMENTS:
        def case(placement=placement):
            model = build(placement)
            bag, fused = model[0], model[1]
            first, rows = mybag.distributed.shard_rows(NUM_EMBEDDINGS, mesh.size(),
                                                       mesh.get_local_rank())
            expected_shape = {"row": (rows, DIM), "column": None,
                              "replicate": (NUM_EMBEDDINGS, DIM)}[placement]
            if expected_shape is not None:
                assert tuple(bag.weight.to_local().shape) == expected_shape
            whole = bag.weight.full_tensor()
            assert torch.equal(whole, build(placement)[0].weight.full_tensor()), "not repeatable"
            assert whole.isfinite().all() and torch.equal(whole[3], torch.zeros(DIM))
            assert not torch.equal(whole[0], whole[NUM_EMBEDDINGS - 1]), "parts drawn alike"
            assert torch.equal(fused.sum.full_tensor(), torch.full((NUM_EMBEDDINGS, DIM), 0.1,
                                                                   dtype=torch.float64))
            assert fused.step.device.type == "cpu" and int(fused.step) == 0

            input, offsets = batch(5, False, False)
            expected = mybag.embedding_bag(input, whole, offsets, mode="sum", padding_idx=3)
            torch.testing.assert_close(bag(input, offsets), expected, rtol=1e-12, atol=1e-12)
            single = mybag.FusedEmbeddingBag(NUM_EMBEDDINGS, DIM, optimizer="adagrad", lr=0.2,
                                             initial_accumulator_value=0.1,
                                             _weight=fused.weight.full_tensor().clone())
            train_fused(single, False, False)
            train_fused(fused, False, False)
            torch.testing.assert_close(fused.weight.full_tensor(), single.weight.detach(),
                                       rtol=1e-12, atol=1e-12)
        yield f"{placement}: tables built on the meta device", case


def run_all(rank, port, out_dir, world_size):
    mesh = init(rank, world_size, port)
    cases = itertools.chain(all_cases(mesh), error_cases(mesh), communication_cases(mesh),
                            dtensor_input_cases(mesh), training_cases(mesh), fused_cases(mesh),
                            meta_cases(mesh))
    report(rank, out_dir, cases)
