"""torch.compile (docs/spec.md §7): forward and backward compile with fullgraph=True (so no graph
break) and with dynamic=True, and give what eager torch gives: output, weight gradient,
per_sample_weights gradient, and the in-place max_norm renormalization of weight.

Compiling is slow on 2 CPU cores, so the cases are few and small, most with the "aot_eager"
backend (it runs the same AOTAutograd tracing through the Meta kernels and the functionalized
graph as inductor, without generating code) and a few with "inductor".
"""

from dataclasses import dataclass

import mybag
import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
import torch.nn.functional as F
from conftest import make_case, random_grad, requires_cuda

NUM_EMBEDDINGS = 13
DIM = 6
# Sizes for dynamic=True: in the first call every dimension differs from every other (else
# dynamo's duck sizing assumes they are equal and recompiles when they are not) and is >= 2.
DYNAMIC_SIZES = ((3, 5), (5, 2), (4, 6))


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@dataclass(frozen=True)
class Config:
    """What a compile test compiles: the input form and the call's options, no tensors (a
    parameter with a readable id; make_inputs builds the tensors for each size). Not a
    conftest.Case, which holds one call's tensors."""

    shape: str = "1d"
    mode: str = "sum"
    index_dtype: torch.dtype = torch.int64
    padding_idx: int | None = None
    psw: bool = False
    include_last_offset: bool = False
    max_norm: float | None = None
    dtype: torch.dtype = torch.float32

    def __str__(self):
        parts = [self.shape, self.mode]
        for f in ["index_dtype", "padding_idx", "psw", "include_last_offset", "max_norm",
                  "dtype"]:
            value = getattr(self, f)
            if value != Config.__dataclass_fields__[f].default:
                parts.append(f"{f}={str(value).replace('torch.', '')}")
        return "-".join(parts)

    def options(self):
        return {"mode": self.mode, "padding_idx": self.padding_idx,
                    "include_last_offset": self.include_last_offset, "max_norm": self.max_norm}


def make_inputs(config: Config, num_bags=3, bag_len=3, seed=0):
    """input, offsets, weight, per_sample_weights: num_bags bags (one of them empty in the 1-D
    form), rows with 2-norms around 4 (so max_norm=1.5 renormalizes most of them)."""
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(NUM_EMBEDDINGS, DIM, generator=gen, dtype=torch.float64) * 2).to(
        config.dtype)
    if config.shape == "2d":
        inp = torch.randint(0, NUM_EMBEDDINGS, (num_bags, bag_len), generator=gen)
        offsets = None
    else:
        lengths = [bag_len] * num_bags
        lengths[1] = 0  # an empty bag
        lengths[-1] = bag_len + 1
        inp = torch.randint(0, NUM_EMBEDDINGS, (sum(lengths),), generator=gen)
        starts = [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)
        if config.include_last_offset:
            starts.append(sum(lengths))  # the last bag ends at N (docs/spec.md §2)
        offsets = torch.tensor(starts, dtype=config.index_dtype)
    if config.padding_idx is not None:
        inp.view(-1)[[0, 2]] = config.padding_idx % NUM_EMBEDDINGS
    inp = inp.to(config.index_dtype)
    psw = (torch.rand(inp.shape, generator=gen, dtype=torch.float64).to(config.dtype)
           if config.psw else None)
    return inp, offsets, weight, psw


def run(fn, inp, offsets, weight, psw, seed=1):
    """Forward and backward of fn on fresh leaves; returns the output, the gradients and the
    weight after the call (max_norm renormalizes it in place)."""
    w = weight.clone().requires_grad_()
    p = None if psw is None else psw.clone().requires_grad_()
    out = fn(inp, w, offsets, p)
    gen = torch.Generator().manual_seed(seed)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    out.backward(grad)
    return {"out": out.detach(), "weight_grad": w.grad, "weight_after": w.detach(),
            "psw_grad": None if p is None else p.grad}


def assert_same(got, expected):
    for key in expected:
        if expected[key] is None:
            assert got[key] is None, key
        else:
            assert got[key] is not None, key
            torch.testing.assert_close(got[key], expected[key], msg=lambda m, key=key: f"{key}: {m}")


def torch_fn(config: Config):
    def fn(inp, w, offsets, psw):
        return F.embedding_bag(inp.long(), w, None if offsets is None else offsets.long(),
                               per_sample_weights=psw, **config.options())

    return fn


def functional_fn(config: Config):
    opts = config.options()

    def fn(inp, w, offsets, psw):
        return mybag.embedding_bag(inp, w, offsets, per_sample_weights=psw, **opts)

    return fn


def op_fn(config: Config):
    mode, padding_idx, ilo, max_norm = (config.mode, config.padding_idx, config.include_last_offset,
                                        config.max_norm)

    def fn(inp, w, offsets, psw):
        return torch.ops.mybag.embedding_bag(inp, w, offsets, max_norm, 2.0, False, mode, False,
                                             psw, ilo, padding_idx)

    return fn


ENTRY_POINTS = {"functional": functional_fn, "op": op_fn}


def check_case(config: Config, entry="functional", backend="aot_eager", dynamic=False,
               sizes=((3, 3),)):
    """Compiles the entry point once with a compile counter and runs it on inputs of every
    size in `sizes`, each compared with eager torch (and eager mybag). With dynamic=True the
    sizes differ and there must be a single compilation."""
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    compiled = torch.compile(ENTRY_POINTS[entry](config), backend=counter, fullgraph=True,
                             dynamic=dynamic)
    compiles_after_first = None
    for k, (num_bags, bag_len) in enumerate(sizes):
        inputs = make_inputs(config, num_bags, bag_len, seed=k)
        expected = run(torch_fn(config), *inputs)
        eager = run(ENTRY_POINTS[entry](config), *inputs)
        # compiled == eager mybag (the compile path), then eager mybag == torch (the kernels)
        assert_same(run(compiled, *inputs), eager)
        assert_same(eager, expected)
        if compiles_after_first is None:
            compiles_after_first = counter.frame_count
    assert counter.frame_count >= 1
    # No recompilation for the other sizes. (The first compilation may call the backend twice:
    # with dynamic=True, dynamo first traces the Python float norm_type symbolically, then
    # restarts the analysis once to specialize it, as the op's schema takes a plain float.)
    assert counter.frame_count == compiles_after_first, (
        f"recompiled for new sizes: {counter.frame_count} compilations, "
        f"{compiles_after_first} after the first call")
    return counter


# ---------------------------------------------------------------------------------------------
# aot_eager, static shapes: every mode, both input forms, padding_idx, psw, max_norm


STATIC_CASES = [
    Config(shape="1d", mode="sum"),
    Config(shape="1d", mode="mean", index_dtype=torch.int32, padding_idx=2),
    Config(shape="1d", mode="max"),
    Config(shape="2d", mode="sum", psw=True),
    Config(shape="2d", mode="mean"),
    Config(shape="2d", mode="max", padding_idx=-1),
    Config(shape="1d", mode="sum", psw=True, padding_idx=5, include_last_offset=True),
    Config(shape="1d", mode="mean", max_norm=1.5),
    Config(shape="2d", mode="max", max_norm=1.5, padding_idx=3),
]


@pytest.mark.parametrize("config", STATIC_CASES, ids=str)
def test_compile_functional_fullgraph(config):
    check_case(config)


@pytest.mark.parametrize("config", [Config(shape="1d", mode="sum", psw=True, padding_idx=1),
                                  Config(shape="2d", mode="mean", max_norm=1.5)], ids=str)
def test_compile_op_directly_fullgraph(config):
    check_case(config, entry="op")


# ---------------------------------------------------------------------------------------------
# dynamic=True: one compilation serves several sizes


DYNAMIC_CASES = [
    Config(shape="1d", mode="sum", psw=True, index_dtype=torch.int32),
    Config(shape="2d", mode="mean", padding_idx=0),
    Config(shape="1d", mode="max", padding_idx=4, include_last_offset=True),
    Config(shape="2d", mode="sum", max_norm=1.5),
]


@pytest.mark.parametrize("config", DYNAMIC_CASES, ids=str)
def test_compile_dynamic(config):
    check_case(config, dynamic=True, sizes=DYNAMIC_SIZES)


def test_compile_dynamic_op_directly():
    check_case(Config(shape="1d", mode="mean", padding_idx=2), entry="op", dynamic=True,
               sizes=DYNAMIC_SIZES[:2])


# ---------------------------------------------------------------------------------------------
# inductor: generated code around the custom ops


def test_compile_inductor_mean_padding():
    check_case(Config(shape="1d", mode="mean", padding_idx=3), backend="inductor")


def test_compile_inductor_max_2d():
    check_case(Config(shape="2d", mode="max", padding_idx=2), backend="inductor")


def test_compile_inductor_dynamic_psw_max_norm():
    check_case(Config(shape="2d", mode="sum", psw=True, max_norm=1.5), backend="inductor",
               dynamic=True, sizes=DYNAMIC_SIZES[:2])


# ---------------------------------------------------------------------------------------------
# max_norm: the compiled call renormalizes the caller's weight in place, as eager does, and
# twice in a row (the second call sees the first call's result).


def test_compile_max_norm_mutates_weight_like_eager():
    config = Config(shape="1d", mode="sum", max_norm=1.0)
    inp, offsets, weight, _ = make_inputs(config)
    w_ref = weight.clone()
    w = weight.clone()
    compiled = torch.compile(functional_fn(config), backend="aot_eager", fullgraph=True)
    for k in range(2):
        before = w.clone()
        ref = F.embedding_bag(inp, w_ref, offsets, mode="sum", max_norm=1.0)
        out = compiled(inp, w, offsets, None)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(w, w_ref)
        # Only rows the input references are renormalized, and some are.
        untouched = torch.ones(NUM_EMBEDDINGS, dtype=torch.bool)
        untouched[inp] = False
        torch.testing.assert_close(w[untouched], before[untouched], rtol=0, atol=0)
        assert not torch.equal(w[~untouched], before[~untouched])
        inp = (inp + 1) % NUM_EMBEDDINGS


# ---------------------------------------------------------------------------------------------
# sparse=True: the weight gradient is a sparse COO tensor, compiled as in eager


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("config", [Config(shape="1d", mode="sum", psw=True, padding_idx=3),
                                  Config(shape="2d", mode="mean")], ids=str)
def test_compile_sparse_grad(config, dynamic):
    opts = config.options()

    def fn(inp, w, offsets, psw):
        return mybag.embedding_bag(inp, w, offsets, per_sample_weights=psw, sparse=True, **opts)

    def ref_fn(inp, w, offsets, psw):
        return F.embedding_bag(inp, w, offsets, per_sample_weights=psw, sparse=True, **opts)

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    for k, sizes in enumerate(DYNAMIC_SIZES[:2] if dynamic else DYNAMIC_SIZES[:1]):
        inputs = make_inputs(config, *sizes, seed=k)
        expected = run(ref_fn, *inputs)
        got = run(compiled, *inputs)
        assert got["weight_grad"].is_sparse
        assert got["weight_grad"].shape == (NUM_EMBEDDINGS, DIM)
        got["weight_grad"] = got["weight_grad"].to_dense()
        expected["weight_grad"] = expected["weight_grad"].to_dense()
        assert_same(got, expected)


# ---------------------------------------------------------------------------------------------
# Through the module


def _modules(mode="mean", **kwargs):
    ref = torch.nn.EmbeddingBag(NUM_EMBEDDINGS, DIM, mode=mode, **kwargs)
    mine = mybag.EmbeddingBag(NUM_EMBEDDINGS, DIM, mode=mode, **kwargs)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("kwargs", [{"mode": "mean", "padding_idx": 1},
                                    {"mode": "max", "max_norm": 1.5},
                                    {"mode": "sum", "include_last_offset": True}],
                         ids=["mean-padding", "max-max_norm", "sum-include_last_offset-psw"])
def test_compile_module(kwargs, dynamic):
    ref, mine = _modules(**kwargs)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(mine, backend=counter, fullgraph=True, dynamic=dynamic)
    config = Config(shape="1d", psw=kwargs["mode"] == "sum",
                include_last_offset=kwargs.get("include_last_offset", False),
                padding_idx=kwargs.get("padding_idx"))
    compiles_after_first = None
    for k, (num_bags, bag_len) in enumerate(DYNAMIC_SIZES[:2] if dynamic else [(3, 3)]):
        inp, offsets, _, psw = make_inputs(config, num_bags, bag_len, seed=k)
        p_ref = None if psw is None else psw.clone().requires_grad_()
        p = None if psw is None else psw.clone().requires_grad_()
        expected = ref(inp, offsets, p_ref)
        out = compiled(inp, offsets, p)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(mine.weight.detach(), ref.weight.detach())
        grad = torch.randn_like(expected)
        expected.backward(grad)
        out.backward(grad)
        torch.testing.assert_close(mine.weight.grad, ref.weight.grad)
        if p is not None:
            torch.testing.assert_close(p.grad, p_ref.grad)
        ref.zero_grad()
        mine.zero_grad()
        if compiles_after_first is None:
            compiles_after_first = counter.frame_count
    assert counter.frame_count == compiles_after_first, "recompiled for a new size"


def test_compile_model_after_swap():
    """A small model built with torch modules, swapped to mybag, compiled and trained one step:
    the same as the torch model trained one step in eager."""

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bag = torch.nn.EmbeddingBag(NUM_EMBEDDINGS, DIM, mode="mean", padding_idx=0)
            self.linear = torch.nn.Linear(DIM, 2)

        def forward(self, inp, offsets):
            return self.linear(self.bag(inp, offsets)).relu()

    torch.manual_seed(0)
    ref = Model()
    model = Model()
    model.load_state_dict(ref.state_dict())
    model = mybag.swap_embedding_bags(model)
    assert isinstance(model.bag, mybag.EmbeddingBag)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    inp, offsets, _, _ = make_inputs(Config(shape="1d", padding_idx=0))
    for m, fn in [(ref, ref), (model, compiled)]:
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        fn(inp, offsets).square().sum().backward()
        opt.step()
    for (name, p_ref), (_, p) in zip(ref.named_parameters(), model.named_parameters()):
        torch.testing.assert_close(p, p_ref, msg=lambda m, name=name: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------
# On a GPU


@requires_cuda
@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_on_cuda(dynamic):
    torch._dynamo.reset()
    case = make_case(mode="mean", padding_idx=2, device="cuda", dim=32, num_bags=8)
    grad_output = random_grad((case.num_bags, 32), torch.float32, "cuda")

    def f(w):
        return mybag.embedding_bag(case.input, w, case.offsets, mode="mean", padding_idx=2)

    compiled = torch.compile(f, fullgraph=True, dynamic=dynamic)
    w1 = case.weight.clone().requires_grad_(True)
    w2 = case.weight.clone().requires_grad_(True)
    out1, out2 = f(w1), compiled(w2)
    out1.backward(grad_output)
    out2.backward(grad_output)
    assert torch.equal(out1, out2)
    assert torch.equal(w1.grad, w2.grad)
