"""TorchScript (docs/spec.md §7): mybag.embedding_bag, code calling
torch.ops.mybag.embedding_bag and mybag.EmbeddingBag script, save, load and run forward and
backward like eager torch.

TorchScript is deprecated upstream and warns (DeprecationWarning); the warnings stay warnings.
"""


import mybag
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

NUM_EMBEDDINGS = 9
DIM = 4


def make_inputs(shape="1d", padding_idx=None, psw=False, include_last_offset=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(NUM_EMBEDDINGS, DIM, generator=gen) * 2
    if shape == "2d":
        inp = torch.randint(0, NUM_EMBEDDINGS, (3, 4), generator=gen)
        offsets = None
    else:
        inp = torch.randint(0, NUM_EMBEDDINGS, (10,), generator=gen)
        offsets = [0, 3, 3, 7] + ([10] if include_last_offset else [])
        offsets = torch.tensor(offsets)
    if padding_idx is not None:
        inp.view(-1)[[0, 4]] = padding_idx % NUM_EMBEDDINGS
    p = torch.rand(inp.shape, generator=gen) if psw else None
    return inp, offsets, weight, p


def fwd_bwd(fn, inp, offsets, weight, psw, seed=1):
    """Runs fn(inp, w, offsets, p) forward and backward on fresh leaves."""
    w = weight.clone().requires_grad_()
    p = None if psw is None else psw.clone().requires_grad_()
    out = fn(inp, w, offsets, p)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    out.backward(grad)
    return out.detach(), w.grad, w.detach(), None if p is None else p.grad


def assert_same(got, expected):
    for g, e, name in zip(got, expected, ["output", "weight grad", "weight after", "psw grad"]):
        if e is None:
            assert g is None, name
        else:
            torch.testing.assert_close(g, e, msg=lambda m, name=name: f"{name}: {m}")


CASES = [
    {"shape": "1d", "mode": "sum"},
    {"shape": "1d", "mode": "mean", "padding_idx": 2},
    {"shape": "1d", "mode": "max"},
    {"shape": "2d", "mode": "sum", "psw": True},
    {"shape": "2d", "mode": "mean", "max_norm": 1.5},
    {"shape": "2d", "mode": "max", "padding_idx": -2},
    {"shape": "1d", "mode": "sum", "include_last_offset": True, "psw": True, "padding_idx": 0},
]


def _split(case):
    data_keys = ("shape", "padding_idx", "psw", "include_last_offset")
    data = {k: case[k] for k in data_keys if k in case}
    options = {"mode": case["mode"], "padding_idx": case.get("padding_idx"),
                   "include_last_offset": case.get("include_last_offset", False),
                   "max_norm": case.get("max_norm")}
    return data, options


def _torch_reference(options):
    def fn(inp, w, offsets, p):
        return F.embedding_bag(inp, w, offsets, per_sample_weights=p, **options)

    return fn


def _id(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


# ---------------------------------------------------------------------------------------------
# mybag.embedding_bag itself, scripted


@pytest.fixture(scope="module")
def scripted_functional():
    return torch.jit.script(mybag.embedding_bag)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_script_functional(case, scripted_functional, tmp_path):
    data, options = _split(case)
    inputs = make_inputs(**data)
    expected = fwd_bwd(_torch_reference(options), *inputs)

    def call(fn):
        def f(inp, w, offsets, p):
            return fn(inp, w, offsets, options["max_norm"], 2.0, False, options["mode"], False,
                      p, options["include_last_offset"], options["padding_idx"])

        return f

    assert_same(fwd_bwd(call(scripted_functional), *inputs), expected)
    # keyword arguments, as a TorchScript caller would write them
    assert_same(fwd_bwd(lambda i, w, o, p: scripted_functional(i, w, o, per_sample_weights=p,
                                                               **options), *inputs), expected)
    path = tmp_path / "functional.pt"
    scripted_functional.save(str(path))
    loaded = torch.jit.load(str(path))
    # A loaded function is a module whose forward has every argument, positionally.
    assert_same(fwd_bwd(call(loaded), *inputs), expected)


# ---------------------------------------------------------------------------------------------
# Code that calls torch.ops.mybag.embedding_bag directly, and mybag.embedding_bag from a
# scripted function


class OpModule(torch.nn.Module):
    mode: str
    include_last_offset: bool
    padding_idx: int | None
    max_norm: float | None

    def __init__(self, weight, mode, include_last_offset=False, padding_idx=None,
                 max_norm=None):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)
        self.mode = mode
        self.include_last_offset = include_last_offset
        self.padding_idx = padding_idx
        self.max_norm = max_norm

    def forward(self, inp: Tensor, offsets: Tensor | None,
                per_sample_weights: Tensor | None) -> Tensor:
        return torch.ops.mybag.embedding_bag(
            inp, self.weight, offsets, self.max_norm, 2.0, False, self.mode, False,
            per_sample_weights, self.include_last_offset, self.padding_idx)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_script_op_module_save_load(case, tmp_path):
    data, options = _split(case)
    inp, offsets, weight, psw = make_inputs(**data)
    expected = fwd_bwd(_torch_reference(options), inp, offsets, weight, psw)

    scripted = torch.jit.script(OpModule(weight.clone(), **options))
    assert "mybag::embedding_bag" in str(scripted.graph)
    path = tmp_path / "op_module.pt"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    for m in [scripted, loaded]:
        with torch.no_grad():
            m.weight.copy_(weight)
        m.zero_grad()
        p = None if psw is None else psw.clone().requires_grad_()
        out = m(inp, offsets, p)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        out.backward(grad)
        got = (out.detach(), m.weight.grad, m.weight.detach(), None if p is None else p.grad)
        assert_same(got, expected)


@torch.jit.script
def _scripted_caller(inp: Tensor, weight: Tensor, offsets: Tensor | None,
                     per_sample_weights: Tensor | None, mode: str,
                     padding_idx: int | None) -> Tensor:
    # Calls through the op with keywords, leaving the rest at the schema's defaults.
    return torch.ops.mybag.embedding_bag(inp, weight, offsets, mode=mode,
                                         per_sample_weights=per_sample_weights,
                                         padding_idx=padding_idx)


@torch.jit.script
def _scripted_default_mode(inp: Tensor, weight: Tensor, offsets: Tensor | None) -> Tensor:
    return torch.ops.mybag.embedding_bag(inp, weight, offsets)


def test_script_function_calling_op_with_keywords(tmp_path):
    for case in [{"mode": "sum", "psw": True, "padding_idx": 1}, {"mode": "max", "padding_idx": None},
                 {"mode": "mean", "padding_idx": -1}]:
        inp, offsets, weight, psw = make_inputs(psw=case.get("psw", False),
                                                padding_idx=case["padding_idx"])
        options = {"mode": case["mode"], "padding_idx": case["padding_idx"]}
        expected = fwd_bwd(_torch_reference(options), inp, offsets, weight, psw)
        got = fwd_bwd(lambda i, w, o, p, options=options: _scripted_caller(
                          i, w, o, p, options["mode"], options["padding_idx"]),
                      inp, offsets, weight, psw)
        assert_same(got, expected)
    path = tmp_path / "caller.pt"
    _scripted_caller.save(str(path))
    loaded = torch.jit.load(str(path))
    inp, offsets, weight, psw = make_inputs(psw=True, padding_idx=3)
    expected = fwd_bwd(_torch_reference({"mode": "sum", "padding_idx": 3}), inp, offsets, weight,
                       psw)
    assert_same(fwd_bwd(lambda i, w, o, p: loaded(i, w, o, p, "sum", 3), inp, offsets, weight,
                        psw), expected)


def test_script_default_mode_is_mean():
    """The schema's default mode is "mean" (docs/spec.md §1), also for scripted callers."""
    inp, offsets, weight, _ = make_inputs()
    expected = fwd_bwd(lambda i, w, o, p: F.embedding_bag(i, w, o), inp, offsets, weight, None)
    got = fwd_bwd(lambda i, w, o, p: _scripted_default_mode(i, w, o), inp, offsets, weight, None)
    assert_same(got, expected)


def test_script_errors_are_raised():
    """Bad input through a scripted caller still raises (as torch.jit.Error, a RuntimeError,
    with the library's message)."""
    inp, offsets, weight, _ = make_inputs()
    bad = inp.clone()
    bad[4] = NUM_EMBEDDINGS + 5
    with pytest.raises(Exception, match=r"(?s)input.*\b14\b"):
        _scripted_caller(bad, weight, offsets, None, "sum", None)
    with pytest.raises(Exception, match=r"(?s)mode.*avg|avg.*mode"):
        _scripted_caller(inp, weight, offsets, None, "avg", None)


# ---------------------------------------------------------------------------------------------
# mybag.EmbeddingBag


MODULE_CASES = [
    {"mode": "mean"},
    {"mode": "sum", "padding_idx": 2, "psw": True},
    {"mode": "max", "max_norm": 1.5},
    {"mode": "sum", "include_last_offset": True},
    {"mode": "mean", "padding_idx": -1, "shape": "2d"},
]


def _module_kwargs(case):
    return {k: v for k, v in case.items() if k not in ("psw", "shape")}


@pytest.mark.parametrize("case", MODULE_CASES, ids=_id)
def test_script_module_save_load(case, tmp_path):
    kwargs = _module_kwargs(case)
    torch.manual_seed(0)
    ref = torch.nn.EmbeddingBag(NUM_EMBEDDINGS, DIM, **kwargs)
    mine = mybag.EmbeddingBag(NUM_EMBEDDINGS, DIM, **kwargs)
    mine.load_state_dict(ref.state_dict())
    scripted = torch.jit.script(mine)
    path = tmp_path / "module.pt"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    assert list(loaded.state_dict()) == ["weight"]

    initial = ref.weight.detach().clone()
    inp, offsets, _, psw = make_inputs(shape=case.get("shape", "1d"),
                                       padding_idx=ref.padding_idx, psw=case.get("psw", False),
                                       include_last_offset=case.get("include_last_offset", False))
    results = []
    for m in [ref, scripted, loaded]:
        with torch.no_grad():
            m.weight.copy_(initial)
        m.zero_grad()
        p = None if psw is None else psw.clone().requires_grad_()
        out = m(inp, offsets, p)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(2)))
        results.append((out.detach(), m.weight.grad, m.weight.detach().clone(),
                        None if p is None else p.grad))
    assert_same(results[1], results[0])
    assert_same(results[2], results[0])
    # The scripted module holds the eager module's Parameter (the loaded one is a copy), and
    # both call mybag's op.
    assert torch.equal(mine.weight.grad, results[1][1])
    assert "mybag::embedding_bag" in str(loaded.inlined_graph)


def test_script_model_with_module_trains_like_torch(tmp_path):
    """A scripted model holding a mybag.EmbeddingBag, saved and loaded, trains (a few SGD steps)
    exactly like the torch model."""

    class Model(torch.nn.Module):
        def __init__(self, bag):
            super().__init__()
            self.bag = bag
            self.linear = torch.nn.Linear(DIM, 1)

        def forward(self, inp: Tensor, offsets: Tensor) -> Tensor:
            return self.linear(self.bag(inp, offsets))

    torch.manual_seed(0)
    ref = Model(torch.nn.EmbeddingBag(NUM_EMBEDDINGS, DIM, mode="sum", padding_idx=1))
    mine = Model(mybag.EmbeddingBag(NUM_EMBEDDINGS, DIM, mode="sum", padding_idx=1))
    mine.load_state_dict(ref.state_dict())
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(mine), str(path))
    loaded = torch.jit.load(str(path))
    inp, offsets, _, _ = make_inputs(padding_idx=1)
    target = torch.randn(4, 1, generator=torch.Generator().manual_seed(3))
    for m in [ref, loaded]:
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            F.mse_loss(m(inp, offsets), target).backward()
            opt.step()
    for (name, p_ref), (_, p) in zip(ref.named_parameters(), loaded.named_parameters()):
        torch.testing.assert_close(p, p_ref, msg=lambda m, name=name: f"{name}: {m}")
