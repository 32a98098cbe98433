"""torch.library.opcheck for the fused optimizer's operators (issue 14,
/work/shared_notes/fused_api.md): the mutating update ``_embedding_bag_fused_update_`` for each
optimizer, and the public ``fused_embedding_bag`` in a few modes.

opcheck runs each op through its schema checks (the declared mutations are the real ones: weight,
state and step, and nothing else), the fake/meta kernels against the real one, and AOT dispatch.
"""

import zlib
from dataclasses import dataclass

import mybag  # noqa: F401  (registers torch.ops.mybag)
import pytest
import torch

ops = torch.ops.mybag

pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")

MODES = {"sum": 0, "mean": 1, "max": 2}
NUM_EMBEDDINGS = 12
DIM = 5
OPTIMIZERS = ["sgd", "adagrad", "rowwise_adagrad", "adam"]
# name -> (lr, eps, beta1, beta2, weight_decay, lr_decay): non-default values, all in use.
HYPER = {
    "sgd": (0.1, 1e-10, 0.9, 0.999, 0.01, 0.0),
    "adagrad": (0.1, 1e-10, 0.9, 0.999, 0.01, 0.05),
    "rowwise_adagrad": (0.1, 1e-10, 0.9, 0.999, 0.0, 0.0),
    "adam": (0.05, 1e-8, 0.8, 0.95, 0.01, 0.0),
}


@dataclass(frozen=True)
class Sample:
    shape: str = "1d"
    mode: str = "sum"
    index_dtype: torch.dtype = torch.int64
    dtype: torch.dtype = torch.float32
    padding_idx: int | None = None
    psw: bool = False
    include_last_offset: bool = False
    scale_grad_by_freq: bool = False
    max_norm: float | None = None
    empty_bag: bool = False

    @property
    def id(self):
        parts = [self.shape, self.mode, str(self.index_dtype).replace("torch.", ""),
                 str(self.dtype).replace("torch.", "")]
        for name in ["padding_idx", "max_norm"]:
            if getattr(self, name) is not None:
                parts.append(f"{name}={getattr(self, name)}")
        for name in ["psw", "include_last_offset", "scale_grad_by_freq", "empty_bag"]:
            if getattr(self, name):
                parts.append(name)
        return "-".join(parts)

    def tensors(self, device):
        """input, weight, offsets, per_sample_weights."""
        gen = torch.Generator().manual_seed(zlib.crc32(self.id.encode()))
        weight = torch.randn(NUM_EMBEDDINGS, DIM, generator=gen, dtype=torch.float64) * 2
        if self.shape == "2d":
            inp = torch.randint(0, NUM_EMBEDDINGS, (3, 4), generator=gen)
            offsets = None
        else:
            inp = torch.randint(0, NUM_EMBEDDINGS, (9,), generator=gen)
            offsets = [0, 2, 2, 6] if self.empty_bag else [0, 2, 5, 6]
            if self.include_last_offset:
                offsets = offsets + [9]
            offsets = torch.tensor(offsets, dtype=self.index_dtype)
        if self.padding_idx is not None:
            inp.view(-1)[[0, 3, 4]] = self.padding_idx % NUM_EMBEDDINGS
        inp = inp.to(self.index_dtype)
        psw = torch.rand(inp.shape, generator=gen, dtype=torch.float64) if self.psw else None
        to = lambda t: None if t is None else t.to(device)  # noqa: E731
        return (to(inp), to(weight.to(self.dtype)), to(offsets),
                to(None if psw is None else psw.to(self.dtype)))


def make_state(optimizer, weight, seed=3):
    """Non-zero state (as after some steps), in the contract's dtype: float64 for float64
    weights, else float32. Adagrad sums are positive."""
    gen = torch.Generator().manual_seed(seed)
    sdt = torch.float64 if weight.dtype == torch.float64 else torch.float32
    rows, dim = weight.shape

    def pos(*shape):
        return torch.rand(*shape, generator=gen, dtype=torch.float64).to(sdt).to(weight.device)

    def signed(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(sdt).to(weight.device)

    return {
        "sgd": [],
        "adagrad": [pos(rows, dim)],
        "rowwise_adagrad": [pos(rows)],
        "adam": [signed(rows, dim) * 0.1, pos(rows, dim) * 0.1],
    }[optimizer]


def step_tensor(device, value=3):
    return torch.tensor(value, dtype=torch.int64, device=device)


UPDATE_SAMPLES = [
    Sample(),
    Sample(mode="mean", index_dtype=torch.int32, padding_idx=2),
    Sample(mode="max", include_last_offset=True, empty_bag=True),
    Sample(shape="2d", mode="sum", psw=True, padding_idx=-1),
    Sample(shape="2d", mode="mean", scale_grad_by_freq=True),
    Sample(mode="sum", dtype=torch.float64, psw=True, index_dtype=torch.int32),
    Sample(shape="2d", mode="max", dtype=torch.bfloat16, padding_idx=4),
    Sample(mode="mean", dtype=torch.float16),
]


def update_args(s: Sample, optimizer, device):
    inp, weight, offsets, psw = s.tensors(device)
    out, max_indices = ops._embedding_bag_forward(weight, inp, offsets, psw, MODES[s.mode],
                                                  s.padding_idx, s.include_last_offset,
                                                  s.scale_grad_by_freq, False)
    if s.mode != "max":
        # The contract: max_indices is an empty (0, 0) tensor outside max mode.
        max_indices = torch.empty(0, 0, dtype=max_indices.dtype, device=device)
    grad = torch.randn(out.shape, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(5)).to(out.dtype).to(device)
    lr, eps, beta1, beta2, wd, lr_decay = HYPER[optimizer]
    return (weight, make_state(optimizer, weight), step_tensor(device), grad, inp, offsets, psw,
            max_indices, MODES[s.mode], s.padding_idx, s.include_last_offset,
            s.scale_grad_by_freq, optimizer, lr, eps, beta1, beta2, wd, lr_decay)


@pytest.mark.parametrize("s", UPDATE_SAMPLES, ids=[s.id for s in UPDATE_SAMPLES])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_opcheck_fused_update(s, optimizer, device):
    torch.library.opcheck(ops._embedding_bag_fused_update_.default,
                          update_args(s, optimizer, device))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_fused_update_mutates_what_it_declares(optimizer):
    """opcheck is not vacuous here: the update changes weight, state and step (the arguments
    its schema marks as written), and the schema marks exactly those."""
    args = update_args(Sample(), optimizer, "cpu")
    weight, state, step = args[0], args[1], args[2]
    before = [weight.clone()] + [t.clone() for t in state] + [step.clone()]
    ops._embedding_bag_fused_update_(*args)
    after = [weight] + list(state) + [step]
    for b, a in zip(before, after):
        assert not torch.equal(a, b)
    assert int(step) == 4
    schema = ops._embedding_bag_fused_update_.default._schema
    written = [a.name for a in schema.arguments
               if a.alias_info is not None and a.alias_info.is_write]
    assert written == ["weight", "state", "step"], written
    assert len(schema.returns) == 0


PUBLIC_SAMPLES = [
    Sample(),
    Sample(mode="mean", padding_idx=2, include_last_offset=True, index_dtype=torch.int32),
    Sample(mode="max", empty_bag=True),
    Sample(shape="2d", mode="sum", psw=True, max_norm=1.5),
    Sample(shape="2d", mode="mean", scale_grad_by_freq=True, padding_idx=-2),
    Sample(mode="sum", dtype=torch.float64, psw=True),
]


def public_args(s: Sample, optimizer, device, requires_grad):
    inp, weight, offsets, psw = s.tensors(device)
    weight.requires_grad_(requires_grad)
    if psw is not None:
        psw.requires_grad_(requires_grad)
    lr, eps, beta1, beta2, wd, lr_decay = HYPER[optimizer]
    return (inp, weight, make_state(optimizer, weight), step_tensor(device), offsets, s.max_norm,
            2.0, s.scale_grad_by_freq, s.mode, psw, s.include_last_offset, s.padding_idx,
            optimizer, lr, eps, beta1, beta2, wd, lr_decay)


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("s", PUBLIC_SAMPLES, ids=[s.id for s in PUBLIC_SAMPLES])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_opcheck_fused_embedding_bag(s, optimizer, device, requires_grad):
    torch.library.opcheck(ops.fused_embedding_bag.default,
                          public_args(s, optimizer, device, requires_grad))


@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise_adagrad"])
def test_opcheck_fused_embedding_bag_other_optimizers(optimizer, device):
    s = Sample(mode="mean", padding_idx=1)
    torch.library.opcheck(ops.fused_embedding_bag.default, public_args(s, optimizer, device, True))


def test_fused_embedding_bag_forward_is_embedding_bag():
    """opcheck is not vacuous for the public op either: its output is the unfused op's."""
    s = Sample(shape="2d", mode="sum", psw=True, padding_idx=-2)
    args = public_args(s, "adam", "cpu", False)
    out = ops.fused_embedding_bag(*args)
    inp, weight, offsets, psw = s.tensors("cpu")
    expected = ops.embedding_bag(inp, weight, offsets, None, 2.0, False, "sum", False, psw, False,
                                 s.padding_idx)
    torch.testing.assert_close(out, expected)
