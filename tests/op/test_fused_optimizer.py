"""mybag.FusedEmbeddingBag (issue 14): an embedding bag whose backward updates the rows the batch
touched with an optimizer step (sgd, adagrad, rowwise_adagrad, adam), instead of producing a
gradient. The contract is /work/shared_notes/fused_api.md.

The reference is torch: nn.EmbeddingBag(sparse=True) gives the gradient (for "max" mode, which
torch refuses to make sparse, the dense gradient restricted to the touched rows), and
torch.optim.SGD / Adagrad / SparseAdam take the step on it. rowwise_adagrad (FBGEMM's
EXACT_ROWWISE_ADAGRAD) has no torch.optim counterpart and is written out. Several steps are
compared, each on a new batch, so that the optimizer state carries from step to step and rows
untouched by one batch are touched by the next.
"""

from __future__ import annotations

import dataclasses
import io

import mybag
import pytest
import torch
import torch.nn.functional as F
from conftest import make_case, random_grad, reference_weight_grad
from torch import nn

# torch.optim.Adagrad builds sparse tensors without invariant checks and says so.
pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")

OPTIMIZERS = ["sgd", "adagrad", "rowwise_adagrad", "adam"]
STATE_NAMES = {
    "sgd": [],
    "adagrad": ["sum"],
    "rowwise_adagrad": ["sum"],
    "adam": ["exp_avg", "exp_avg_sq"],
}
# Hyperparameters away from the defaults, so that each one shows if it is ignored or misused.
HP = {
    "sgd": {"lr": 0.3},
    "adagrad": {"lr": 0.2, "eps": 1e-10, "lr_decay": 0.05, "initial_accumulator_value": 0.1},
    "rowwise_adagrad": {"lr": 0.2, "eps": 1e-10},
    "adam": {"lr": 0.05, "betas": (0.8, 0.95), "eps": 1e-6},
}
# torch.optim's defaults, which the contract adopts.
DEFAULTS = {
    "sgd": {"lr": 1e-3},
    "adagrad": {"lr": 1e-2, "eps": 1e-10, "lr_decay": 0.0, "initial_accumulator_value": 0.0},
    "rowwise_adagrad": {"lr": 1e-2, "eps": 1e-10, "initial_accumulator_value": 0.0},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8},
}
STEPS = 4

# float32/float64: the fused kernel and torch add a row's contributions in different orders, so
# the results differ by a few roundings per step. float64 stays far below 1e-12 after a few
# steps; float32 gets the project's usual float32 tolerance. State values can be small results
# of cancellation (Adam's exp_avg = b1 m + (1 - b1) g with m and g of opposite signs), whose
# error is relative to the terms (gradients of order 1), not to the result: hence an absolute
# floor of a few roundings of 1, tighter than the weight's.
WEIGHT_TOL = {
    torch.float32: {"rtol": 1.3e-6, "atol": 1e-5},
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
}
STATE_TOL = {
    torch.float32: {"rtol": 1.3e-6, "atol": 1e-6},
    torch.float64: {"rtol": 1e-12, "atol": 1e-13},
}


def one_ulp(dtype):
    """Tolerance of one unit in the last place of ``dtype``: for a normal number e, one ulp is at
    most eps * |e|; the absolute floor is the spacing of the subnormals."""
    info = torch.finfo(dtype)
    return {"rtol": info.eps, "atol": info.smallest_normal * info.eps}


def close(actual, expected, tol, msg):
    assert actual.dtype == expected.dtype, f"{msg}: dtype {actual.dtype} != {expected.dtype}"
    torch.testing.assert_close(actual.detach().cpu(), expected.detach().cpu(),
                               msg=lambda m: f"{msg}\n{m}", **tol)


# ---------------------------------------------------------------------------------------------
# Configurations and batches


@dataclasses.dataclass(frozen=True)
class Cfg:
    """The module's options and the shape of its batches."""

    name: str
    mode: str = "sum"
    form: str = "1d"
    include_last_offset: bool = False
    padding_idx: int | None = None
    psw: bool = False
    scale_grad_by_freq: bool = False
    max_norm: float | None = None
    norm_type: float = 2.0
    empty_bags: bool = False
    index: str = "i64"
    num_embeddings: int = 50
    dim: int = 8
    num_bags: int = 6
    max_bag: int = 5

    def __str__(self):
        return self.name

    def module_options(self):
        return {"max_norm": self.max_norm, "norm_type": self.norm_type,
                "scale_grad_by_freq": self.scale_grad_by_freq, "mode": self.mode,
                "include_last_offset": self.include_last_offset,
                "padding_idx": self.padding_idx}

    def table(self, device, dtype, seed=0):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(self.num_embeddings, self.dim, generator=g, dtype=torch.float64)
        return w.to(dtype).to(device)

    def batch(self, step, device, dtype) -> Batch:
        case = make_case(mode=self.mode, form=self.form,
                         include_last_offset=self.include_last_offset,
                         padding_idx=self.padding_idx, psw=self.psw, dtype=dtype,
                         index_dtypes=self.index, empty_bags=self.empty_bags,
                         num_embeddings=self.num_embeddings, dim=self.dim,
                         num_bags=self.num_bags, max_bag=self.max_bag, seed=100 + step,
                         device=device)
        grad_output = random_grad((case.num_bags, self.dim), dtype, device, seed=200 + step)
        return Batch(case.input, case.offsets, case.per_sample_weights, grad_output)

    def batches(self, device, dtype, steps=STEPS):
        return [self.batch(k, device, dtype) for k in range(steps)]


@dataclasses.dataclass
class Batch:
    input: torch.Tensor
    offsets: torch.Tensor | None
    psw: torch.Tensor | None
    grad_output: torch.Tensor


CONFIGS = [
    Cfg("sum_1d"),
    Cfg("mean_1d_ilo_i32", mode="mean", include_last_offset=True, index="i32"),
    Cfg("max_1d", mode="max"),
    Cfg("sum_2d_psw", form="2d", psw=True),
    Cfg("mean_2d_pad", mode="mean", form="2d", padding_idx=3),
    Cfg("max_2d_negpad_i32", mode="max", form="2d", padding_idx=-2, index="i32"),
    Cfg("sum_1d_empty_pad_psw_i32", empty_bags=True, padding_idx=0, psw=True, index="i32"),
    Cfg("max_1d_empty_ilo", mode="max", empty_bags=True, include_last_offset=True),
    # Few rows, many entries: rows repeat within and across bags.
    Cfg("sum_repeated", num_embeddings=6, num_bags=6, max_bag=8),
    Cfg("max_repeated_pad", mode="max", num_embeddings=6, max_bag=8, padding_idx=5),
    Cfg("mean_freq_negpad", mode="mean", scale_grad_by_freq=True, padding_idx=-1,
        num_embeddings=8, max_bag=8),
    Cfg("sum_2d_freq_psw", form="2d", scale_grad_by_freq=True, psw=True, num_embeddings=8),
    Cfg("max_max_norm", mode="max", max_norm=1.0),
    Cfg("mean_max_norm_l1_ilo_pad", mode="mean", max_norm=2.0, norm_type=1.0,
        include_last_offset=True, padding_idx=4),
]
CFG = {c.name: c for c in CONFIGS}


def touched_rows(input, padding_idx, num_embeddings):
    """The rows a batch updates: those named by its non-padding entries, sorted, unique."""
    flat = input.flatten().to(torch.int64)
    if padding_idx is not None:
        flat = flat[flat != padding_idx % num_embeddings]
    return torch.unique(flat)


# ---------------------------------------------------------------------------------------------
# The reference


class TorchReference:
    """torch's nn.EmbeddingBag + torch.optim doing what FusedEmbeddingBag does in its backward.

    ``weight`` is the starting table (its dtype is the one the step is computed in);
    ``state``/``step``: start from that optimizer state instead of a fresh one."""

    def __init__(self, weight, cfg: Cfg, optimizer, hp, state=None, step=0):
        self.cfg = cfg
        self.optimizer = optimizer
        self.hp = {**DEFAULTS[optimizer], **hp}
        self.weight_decay = hp.get("weight_decay", 0.0)
        num, dim = weight.shape
        # The module renorms in place (max_norm) like torch's; sparse=True except in max mode,
        # where torch refuses it. scale_grad_by_freq is applied below, not by torch.
        self.bag = nn.EmbeddingBag(num, dim, max_norm=cfg.max_norm, norm_type=cfg.norm_type,
                                   mode=cfg.mode, sparse=cfg.mode != "max",
                                   _weight=weight.detach().clone(),
                                   include_last_offset=cfg.include_last_offset,
                                   padding_idx=cfg.padding_idx)
        p = self.bag.weight
        h = self.hp
        if optimizer == "sgd":
            self.opt = torch.optim.SGD([p], lr=h["lr"])
        elif optimizer == "adagrad":
            self.opt = torch.optim.Adagrad([p], lr=h["lr"], lr_decay=h["lr_decay"], eps=h["eps"],
                                           initial_accumulator_value=h["initial_accumulator_value"])
            if state is not None:
                self.opt.state[p]["sum"].copy_(state["sum"])
                self.opt.state[p]["step"].fill_(step)
        elif optimizer == "adam":
            self.opt = torch.optim.SparseAdam([p], lr=h["lr"], betas=h["betas"], eps=h["eps"])
            if state is not None:
                self.opt.state[p] = {"step": step, "exp_avg": state["exp_avg"].clone(),
                                     "exp_avg_sq": state["exp_avg_sq"].clone()}
        elif optimizer == "rowwise_adagrad":
            self.opt = None
            self.sum = torch.full((num,), float(h["initial_accumulator_value"]), dtype=p.dtype,
                                  device=p.device)
            if state is not None:
                self.sum.copy_(state["sum"])
        else:
            raise ValueError(optimizer)
        self.step_count = step

    @property
    def weight(self):
        return self.bag.weight.detach()

    def set_lr(self, lr):
        self.hp["lr"] = lr
        if self.opt is not None:
            self.opt.param_groups[0]["lr"] = lr

    def state(self):
        p = self.bag.weight
        if self.optimizer == "rowwise_adagrad":
            return {"sum": self.sum}
        if self.optimizer == "sgd":
            return {}
        return {name: self.opt.state[p][name] for name in STATE_NAMES[self.optimizer]}

    def gradient(self, b: Batch):
        """Forward (renorming the table like torch) and the gradient (values, rows): one row of
        values for each touched row, zero rows included."""
        cfg, p = self.cfg, self.bag.weight
        psw = None if b.psw is None else b.psw.to(p.dtype)
        go = b.grad_output.to(p.dtype)
        out = self.bag(b.input, b.offsets, per_sample_weights=psw)
        if cfg.scale_grad_by_freq:
            # CPU torch computes this gradient wrongly (pytorch#190063, docs/spec.md §5): the
            # project's hand-written float64 reference, rounded once, stands in for it.
            grad = reference_weight_grad(go, b.input, p, b.offsets, mode=cfg.mode,
                                         per_sample_weights=psw,
                                         include_last_offset=cfg.include_last_offset,
                                         padding_idx=cfg.padding_idx, scale_grad_by_freq=True)
            grad = grad.to(p.dtype).to(p.device)
        else:
            out.backward(go)
            grad = p.grad.coalesce().to_dense() if p.grad.is_sparse else p.grad
            p.grad = None
        rows = touched_rows(b.input, cfg.padding_idx, p.shape[0]).to(p.device)
        return out.detach(), grad[rows], rows

    def step(self, b: Batch):
        """One training step on batch b; returns torch's forward output."""
        out, values, rows = self.gradient(b)
        p = self.bag.weight
        if self.weight_decay:
            # torch.optim refuses weight_decay on sparse gradients: the contract's recipe is to
            # add it to the coalesced gradient's values (touched rows only).
            values = values + self.weight_decay * p.detach()[rows]
        if self.optimizer == "rowwise_adagrad":
            with torch.no_grad():
                self.sum[rows] += (values * values).mean(1)
                denom = self.sum[rows].sqrt() + self.hp["eps"]
                p[rows] -= self.hp["lr"] * values / denom[:, None]
        else:
            # rows are sorted and unique: the tensor is coalesced, zero rows kept (SparseAdam
            # decays exp_avg of a touched row whose gradient is zero).
            p.grad = torch.sparse_coo_tensor(rows[None], values, p.shape,
                                             check_invariants=True).coalesce()
            self.opt.step()
            p.grad = None
        self.step_count += 1
        return out


# ---------------------------------------------------------------------------------------------
# The fused module


def make_fused(weight, cfg: Cfg, optimizer, hp):
    num, dim = weight.shape
    return mybag.FusedEmbeddingBag(num, dim, **cfg.module_options(),
                                   _weight=weight.detach().clone(), optimizer=optimizer, **hp)


def fused_state(m, optimizer):
    return {name: getattr(m, name) for name in STATE_NAMES[optimizer]}


def snapshot(m, optimizer):
    """Copies of everything a step may change: weight, state, step."""
    return {"weight": m.weight.detach().clone(), "step": m.step.clone(),
            **{k: v.detach().clone() for k, v in fused_state(m, optimizer).items()}}


def assert_snapshot_equal(m, optimizer, snap, msg):
    now = snapshot(m, optimizer)
    assert now.keys() == snap.keys()
    for k in snap:
        assert torch.equal(now[k], snap[k]), f"{msg}: {k} changed"


def train_step(m, b: Batch, psw_requires_grad=False):
    psw = b.psw
    if psw is not None and psw_requires_grad:
        psw = psw.clone().requires_grad_()
    out = m(b.input, b.offsets, psw)
    out.backward(b.grad_output)
    return out, psw


def check_against_reference(m, ref: TorchReference, optimizer, wtol, stol, msg):
    close(m.weight, ref.weight.to(m.weight.dtype), wtol, f"{msg}: weight")
    for name, expected in ref.state().items():
        close(getattr(m, name), expected, stol, f"{msg}: state {name}")
    assert m.step.dtype == torch.int64 and m.step.dim() == 0, msg
    assert int(m.step) == ref.step_count, f"{msg}: step {int(m.step)} != {ref.step_count}"


def check_untouched(m, optimizer, before, b: Batch, cfg: Cfg, msg):
    """Rows the batch did not touch keep their weight and state bit for bit. With max_norm the
    forward may renorm any row the input names (padding included), so for the weight only rows
    absent from the input count."""
    num = m.weight.shape[0]
    touched = torch.zeros(num, dtype=torch.bool)
    touched[touched_rows(b.input, cfg.padding_idx, num).cpu()] = True
    named = torch.zeros(num, dtype=torch.bool)
    named[b.input.flatten().cpu().to(torch.int64)] = True
    keep_weight = ~named if cfg.max_norm is not None else ~touched
    assert torch.equal(m.weight.detach().cpu()[keep_weight], before["weight"].cpu()[keep_weight]), \
        f"{msg}: untouched rows of weight changed"
    for name in STATE_NAMES[optimizer]:
        assert torch.equal(getattr(m, name).cpu()[~touched], before[name].cpu()[~touched]), \
            f"{msg}: untouched rows of state {name} changed"


def unfused_psw_grad(weight_before, b: Batch, cfg: Cfg):
    """The per_sample_weights gradient of the unfused op on the weight the forward saw."""
    psw = b.psw.clone().requires_grad_()
    out = mybag.embedding_bag(b.input, weight_before.clone(), b.offsets,
                              max_norm=cfg.max_norm, norm_type=cfg.norm_type, mode=cfg.mode,
                              per_sample_weights=psw,
                              include_last_offset=cfg.include_last_offset,
                              padding_idx=cfg.padding_idx)
    out.backward(b.grad_output)
    return psw.grad


def run_against_reference(device, optimizer, cfg: Cfg, dtype, hp, steps=STEPS):
    weight0 = cfg.table(device, dtype)
    m = make_fused(weight0, cfg, optimizer, hp)
    ref = TorchReference(weight0, cfg, optimizer, hp)
    for k, b in enumerate(cfg.batches(device, dtype, steps)):
        msg = f"{optimizer} {cfg} {dtype} step {k + 1}"
        before = snapshot(m, optimizer)
        out, psw = train_step(m, b, psw_requires_grad=b.psw is not None)
        ref_out = ref.step(b)
        close(out.detach(), ref_out, WEIGHT_TOL[dtype], f"{msg}: output")
        assert m.weight.grad is None, f"{msg}: weight.grad was set"
        check_against_reference(m, ref, optimizer, WEIGHT_TOL[dtype], STATE_TOL[dtype], msg)
        check_untouched(m, optimizer, before, b, cfg, msg)
        if psw is not None:
            close(psw.grad, unfused_psw_grad(before["weight"], b, cfg), WEIGHT_TOL[dtype],
                  f"{msg}: per_sample_weights grad")
    return m


# ---------------------------------------------------------------------------------------------
# Against torch, several steps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_matches_torch_optim(device, optimizer, cfg, dtype):
    run_against_reference(device, optimizer, cfg, dtype, HP[optimizer])


@pytest.mark.parametrize("cfg", [CFG["sum_2d_psw"], CFG["max_1d"], CFG["mean_2d_pad"]], ids=str)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_weight_decay(device, optimizer, cfg):
    # Lazy L2: only touched rows decay (max mode: also a row whose gradient is zero), never the
    # padding row.
    run_against_reference(device, optimizer, cfg, torch.float64,
                          {**HP[optimizer], "weight_decay": 0.1})


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_default_hyperparameters(device, optimizer):
    cfg = CFG["mean_2d_pad"]
    m = run_against_reference(device, optimizer, cfg, torch.float64, {})
    for name, value in DEFAULTS[optimizer].items():
        if name != "initial_accumulator_value":
            assert getattr(m, name) == value, name
    assert m.optimizer == optimizer
    assert m.weight_decay == 0.0


@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise_adagrad"])
def test_initial_accumulator_value(device, optimizer):
    cfg = CFG["sum_1d"]
    hp = {**HP[optimizer], "initial_accumulator_value": 0.7}
    m = make_fused(cfg.table(device, torch.float32), cfg, optimizer, hp)
    shape = (cfg.num_embeddings, cfg.dim) if optimizer == "adagrad" else (cfg.num_embeddings,)
    assert torch.equal(m.sum, torch.full(shape, 0.7, device=device)), m.sum
    run_against_reference(device, optimizer, cfg, torch.float64, hp)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=["f32", "f64", "f16", "bf16"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_parameters_and_buffers(device, optimizer, dtype):
    cfg = CFG["sum_1d"]
    m = make_fused(cfg.table(device, dtype), cfg, optimizer, HP[optimizer])
    assert isinstance(m.weight, nn.Parameter) and m.weight.requires_grad
    assert m.weight.dtype == dtype
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    expected = {"step"} | set(STATE_NAMES[optimizer])
    assert {name for name, _ in m.named_buffers()} == expected
    assert m.step.dtype == torch.int64 and int(m.step) == 0
    for name in STATE_NAMES[optimizer]:
        buf = getattr(m, name)
        assert buf.dtype == state_dtype and buf.device.type == device, name
        rows = (cfg.num_embeddings,) if optimizer == "rowwise_adagrad" else (
            cfg.num_embeddings, cfg.dim)
        assert tuple(buf.shape) == rows, name
    assert [n for n, _ in m.named_parameters()] == ["weight"]


# ---------------------------------------------------------------------------------------------
# float16 / bfloat16


@pytest.mark.parametrize("cfg", [CFG["sum_2d_psw"], CFG["mean_2d_pad"], CFG["max_1d"],
                                 CFG["sum_repeated"]], ids=str)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_half_weights(device, optimizer, dtype, cfg):
    """Each step against the step taken in float32 on weight.float() with the module's float32
    state, rounded once to the weight's dtype. Compared step by step (the reference restarts from
    the module's table and state), because a one-ulp difference in one step would otherwise grow
    into more in the next. State is float32 but may come from a gradient the kernel rounded to
    the weight's dtype: it gets the same one-ulp (relative) tolerance."""
    hp = HP[optimizer]
    m = make_fused(cfg.table(device, dtype), cfg, optimizer, hp)
    for k, b in enumerate(cfg.batches(device, dtype)):
        msg = f"{optimizer} {cfg} {dtype} step {k + 1}"
        before = snapshot(m, optimizer)
        for name in STATE_NAMES[optimizer]:
            assert before[name].dtype == torch.float32, name
        ref = TorchReference(before["weight"].float(), cfg, optimizer, hp,
                             state={n: before[n] for n in STATE_NAMES[optimizer]},
                             step=int(before["step"]))
        ref.step(b)
        train_step(m, b)
        assert m.weight.grad is None
        close(m.weight, ref.weight.to(dtype), one_ulp(dtype), f"{msg}: weight")
        for name, expected in ref.state().items():
            close(getattr(m, name), expected, {"rtol": torch.finfo(dtype).eps, "atol": 1e-12},
                  f"{msg}: state {name}")
        assert int(m.step) == k + 1
        check_untouched(m, optimizer, before, b, cfg, msg)


# ---------------------------------------------------------------------------------------------
# Steps, learning rate, state_dict, construction


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_step_counts_backwards_even_without_touched_rows(device, optimizer):
    """A batch of empty bags touches no row: nothing changes but step, which advances (Adam's
    bias correction and Adagrad's lr_decay of later steps depend on it), as torch.optim's per
    parameter step does when given an empty sparse gradient."""
    cfg = CFG["sum_1d"]
    dtype = torch.float64
    weight0 = cfg.table(device, dtype)
    m = make_fused(weight0, cfg, optimizer, HP[optimizer])
    ref = TorchReference(weight0, cfg, optimizer, HP[optimizer])
    empty = Batch(torch.empty(0, dtype=torch.int64, device=device),
                  torch.zeros(3, dtype=torch.int64, device=device), None,
                  random_grad((3, cfg.dim), dtype, device, seed=5))
    batches = [cfg.batch(0, device, dtype), empty, empty, cfg.batch(1, device, dtype)]
    for k, b in enumerate(batches):
        before = snapshot(m, optimizer)
        train_step(m, b)
        ref.step(b)
        msg = f"{optimizer} step {k + 1}"
        check_against_reference(m, ref, optimizer, WEIGHT_TOL[dtype], STATE_TOL[dtype], msg)
        if b is empty:
            after = snapshot(m, optimizer)
            for name in ["weight"] + STATE_NAMES[optimizer]:
                assert torch.equal(after[name], before[name]), f"{msg}: {name}"
    assert int(m.step) == 4


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_changing_lr_between_steps(device, optimizer):
    cfg = CFG["mean_2d_pad"]
    dtype = torch.float64
    weight0 = cfg.table(device, dtype)
    m = make_fused(weight0, cfg, optimizer, HP[optimizer])
    ref = TorchReference(weight0, cfg, optimizer, HP[optimizer])
    lrs = [None, 0.02, 0.5, 0.02]  # None: the constructor's
    for k, (lr, b) in enumerate(zip(lrs, cfg.batches(device, dtype))):
        if lr is not None:
            m.lr = lr
            ref.set_lr(lr)
        train_step(m, b)
        ref.step(b)
        check_against_reference(m, ref, optimizer, WEIGHT_TOL[dtype], STATE_TOL[dtype],
                                f"{optimizer} step {k + 1} lr {lr}")


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_hyperparameters_are_read_at_forward(device, optimizer):
    """The backward of a forward uses that forward's lr: changing m.lr between the two does not
    affect this step, only the next one."""
    cfg = CFG["sum_1d"]
    dtype = torch.float64
    weight0 = cfg.table(device, dtype)
    m = make_fused(weight0, cfg, optimizer, HP[optimizer])
    ref = TorchReference(weight0, cfg, optimizer, HP[optimizer])
    b = cfg.batch(0, device, dtype)
    out = m(b.input, b.offsets)
    m.lr = 100.0
    out.backward(b.grad_output)
    ref.step(b)
    check_against_reference(m, ref, optimizer, WEIGHT_TOL[dtype], STATE_TOL[dtype], optimizer)
    b = cfg.batch(1, device, dtype)
    train_step(m, b)
    ref.set_lr(100.0)
    ref.step(b)
    check_against_reference(m, ref, optimizer, WEIGHT_TOL[dtype], STATE_TOL[dtype], optimizer)


def _save_load(sd):
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_state_dict_resumes_bit_exactly(device, optimizer):
    cfg = CFG["sum_1d_empty_pad_psw_i32"]
    dtype = torch.float32
    hp = {**HP[optimizer], "weight_decay": 0.01}
    m = make_fused(cfg.table(device, dtype), cfg, optimizer, hp)
    batches = cfg.batches(device, dtype, steps=5)
    for b in batches[:2]:
        train_step(m, b)
    sd = _save_load(m.state_dict())
    assert "_extra_state" in sd
    assert int(sd["step"]) == 2
    # A module built with other hyperparameters (the defaults) and another table: loading gives
    # it the saved table, state, step and hyperparameters.
    other = mybag.FusedEmbeddingBag(cfg.num_embeddings, cfg.dim, **cfg.module_options(),
                                    device=device, dtype=dtype, optimizer=optimizer)
    other.load_state_dict(sd)
    for name, value in hp.items():
        if name != "initial_accumulator_value":  # used at construction only
            assert getattr(other, name) == value, name
    assert other.optimizer == optimizer
    for b in batches[2:]:
        train_step(m, b)
        train_step(other, b)
        for name, value in snapshot(m, optimizer).items():
            assert torch.equal(getattr(other, name).detach(), value), name


@pytest.mark.parametrize("source", ["torch", "mybag"])
def test_from_embedding_bag(device, source):
    cls = nn.EmbeddingBag if source == "torch" else mybag.EmbeddingBag
    cfg = CFG["mean_max_norm_l1_ilo_pad"]
    dtype = torch.float32
    weight0 = cfg.table(device, dtype)
    src = cls(cfg.num_embeddings, cfg.dim, **cfg.module_options(), sparse=True,
              _weight=weight0.clone())
    src_weight = src.weight.detach().clone()
    hp = HP["adagrad"]
    m = mybag.FusedEmbeddingBag.from_embedding_bag(src, optimizer="adagrad", **hp)
    assert isinstance(m, mybag.FusedEmbeddingBag)
    assert torch.equal(m.weight.detach(), weight0)
    for name, value in cfg.module_options().items():
        expected = value % cfg.num_embeddings if name == "padding_idx" else value
        assert getattr(m, name) == expected, name
    assert m.optimizer == "adagrad" and m.lr == hp["lr"] and m.lr_decay == hp["lr_decay"]
    # Same options: trains like the reference (max_norm with the L1 norm, include_last_offset,
    # padding_idx all taken over).
    ref = TorchReference(weight0, cfg, "adagrad", hp)
    for k, b in enumerate(cfg.batches(device, dtype, steps=3)):
        train_step(m, b)
        ref.step(b)
        check_against_reference(m, ref, "adagrad", WEIGHT_TOL[dtype], STATE_TOL[dtype],
                                f"step {k + 1}")
    # The table was copied: training the fused module left the source's alone.
    assert torch.equal(src.weight.detach(), src_weight)


def test_from_embedding_bag_max_mode_keeps_options(device):
    src = nn.EmbeddingBag(20, 4, mode="max", include_last_offset=True, padding_idx=-3,
                          device=device, dtype=torch.float64)
    m = mybag.FusedEmbeddingBag.from_embedding_bag(src, optimizer="adam", lr=0.01,
                                                   betas=(0.5, 0.6))
    assert (m.mode, m.include_last_offset, m.padding_idx) == ("max", True, 17)
    assert m.weight.dtype == torch.float64 and m.weight.device.type == device
    assert m.betas == (0.5, 0.6) and m.lr == 0.01
    inp = torch.tensor([1, 17, 4, 4, 9], device=device)
    offsets = torch.tensor([0, 2, 5], device=device)
    torch.testing.assert_close(m(inp, offsets).detach(), src(inp, offsets).detach())


# ---------------------------------------------------------------------------------------------
# Determinism, errors


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_same_bits_for_any_thread_count(optimizer):
    # Bigger batches than elsewhere, so that the kernels have work to split between threads.
    cfg = Cfg("big", mode="sum", num_embeddings=200, dim=16, num_bags=64, max_bag=24, psw=True)
    dtype = torch.float32
    results = []
    threads = torch.get_num_threads()
    try:
        for n in [1, 2]:
            torch.set_num_threads(n)
            m = make_fused(cfg.table("cpu", dtype), cfg, optimizer, HP[optimizer])
            for b in cfg.batches("cpu", dtype, steps=3):
                train_step(m, b)
            results.append(snapshot(m, optimizer))
    finally:
        torch.set_num_threads(threads)
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name]), name


BAD_BATCHES = {
    # name: (input, offsets, what the message names)
    "index_too_big": ([1, 2, 50, 3], [0, 2], "input"),
    "index_negative": ([1, -1, 3, 4], [0, 2], "input"),
    "offsets_not_from_zero": ([1, 2, 3, 4], [1, 2], "offsets"),
    "offsets_decreasing": ([1, 2, 3, 4], [0, 3, 2], "offsets"),
    "offsets_past_end": ([1, 2, 3, 4], [0, 5], "offsets"),
}


@pytest.mark.parametrize("bad", list(BAD_BATCHES))
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_bad_batch_raises_and_changes_nothing(device, optimizer, bad):
    cfg = CFG["sum_1d"]
    dtype = torch.float32
    m = make_fused(cfg.table(device, dtype), cfg, optimizer, HP[optimizer])
    train_step(m, cfg.batch(0, device, dtype))  # non-trivial state to protect
    before = snapshot(m, optimizer)
    inp, offsets, names = BAD_BATCHES[bad]
    inp = torch.tensor(inp, device=device)
    offsets = torch.tensor(offsets, device=device)
    with pytest.raises((ValueError, IndexError, RuntimeError), match=names):
        out = m(inp, offsets)
        out.sum().backward()
    assert_snapshot_equal(m, optimizer, before, bad)
    # The module still trains afterwards, from where it was.
    train_step(m, cfg.batch(1, device, dtype))
    assert int(m.step) == 2


BAD_HYPERPARAMETERS = [
    ({"optimizer": "sgd", "lr": -0.1}, "lr"),
    ({"optimizer": "adagrad", "lr": -1e-3}, "lr"),
    ({"optimizer": "adam", "lr": -1.0}, "lr"),
    ({"optimizer": "adam", "betas": (1.0, 0.999)}, "betas"),
    ({"optimizer": "adam", "betas": (0.9, -0.1)}, "betas"),
    ({"optimizer": "adam", "betas": (0.9, 1.5)}, "betas"),
    ({"optimizer": "rmsprop"}, "optimizer"),
]


@pytest.mark.parametrize("kwargs,name", BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        mybag.FusedEmbeddingBag(10, 4, **kwargs)


@pytest.mark.parametrize("kwargs,name", BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_raise_in_functional_form(device, kwargs, name):
    weight = torch.randn(10, 4, device=device, requires_grad=True)
    optimizer = kwargs["optimizer"]
    state = initial_state(optimizer if optimizer in STATE_NAMES else "adam", weight, {})
    step = torch.zeros((), dtype=torch.int64, device=device)
    before = [weight.detach().clone(), step.clone()] + [t.clone() for t in state]
    with pytest.raises(ValueError, match=name):
        out = mybag.fused_embedding_bag(torch.tensor([1, 2, 3], device=device), weight, state,
                                        step, torch.tensor([0, 1], device=device), **kwargs)
        out.sum().backward()
    for b, a in zip(before, [weight.detach(), step] + state):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name,value", [("lr", -1.0), ("betas", (0.9, 1.0)), ("eps", -1e-8)])
def test_bad_hyperparameter_set_on_module_raises_and_changes_nothing(device, name, value):
    # Hyperparameters are plain attributes read at forward: a bad one set between steps is
    # caught there, before anything is saved or updated.
    cfg = CFG["sum_1d"]
    m = make_fused(cfg.table(device, torch.float32), cfg, "adam", HP["adam"])
    train_step(m, cfg.batch(0, device, torch.float32))
    before = snapshot(m, "adam")
    setattr(m, name, value)
    with pytest.raises(ValueError, match=name):
        train_step(m, cfg.batch(1, device, torch.float32))
    assert_snapshot_equal(m, "adam", before, name)


def test_max_mode_rejects_scale_grad_by_freq():
    with pytest.raises(ValueError, match="scale_grad_by_freq"):
        mybag.FusedEmbeddingBag(10, 4, mode="max", scale_grad_by_freq=True)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_no_step_without_grad(device, optimizer):
    # docs/spec.md §8: under no_grad, or when the table does not require grad, nothing is
    # recorded and no step is taken; the forward still gives the bags.
    cfg = CFG["mean_2d_pad"]
    m = make_fused(cfg.table(device, torch.float32), cfg, optimizer, HP[optimizer])
    train_step(m, cfg.batch(0, device, torch.float32))
    before = snapshot(m, optimizer)
    b = cfg.batch(1, device, torch.float32)
    expected = F.embedding_bag(b.input, before["weight"], b.offsets, mode=cfg.mode,
                               padding_idx=cfg.padding_idx)
    with torch.no_grad():
        out = m(b.input, b.offsets)
    assert not out.requires_grad
    torch.testing.assert_close(out, expected)
    m.weight.requires_grad_(False)
    out = m(b.input, b.offsets)
    assert not out.requires_grad
    assert_snapshot_equal(m, optimizer, before, "without grad")


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_second_backward_of_a_stale_forward_raises(device, optimizer):
    # docs/spec.md §8: two forwards, then two backwards: the first steps the table, the second
    # would step with a gradient from the old table, and raises instead, changing nothing.
    cfg = CFG["sum_1d"]
    m = make_fused(cfg.table(device, torch.float32), cfg, optimizer, HP[optimizer])
    b0, b1 = cfg.batch(0, device, torch.float32), cfg.batch(1, device, torch.float32)
    out0 = m(b0.input, b0.offsets)
    out1 = m(b1.input, b1.offsets)
    out0.backward(b0.grad_output)
    after_first = snapshot(m, optimizer)
    assert int(after_first["step"]) == 1
    with pytest.raises(RuntimeError, match="weight"):
        out1.backward(b1.grad_output)
    assert_snapshot_equal(m, optimizer, after_first, "stale backward")


def _bad_states(weight):
    num, dim = weight.shape
    f32 = {"dtype": torch.float32, "device": weight.device}
    return {
        "missing": [torch.zeros(num, dim, **f32)],
        "shape": [torch.zeros(num + 1, dim, **f32), torch.zeros(num + 1, dim, **f32)],
        "dtype": [torch.zeros(num, dim, dtype=torch.float64, device=weight.device)] * 2,
        "non_contiguous": [torch.zeros(dim, num, **f32).t(), torch.zeros(dim, num, **f32).t()],
    }


@pytest.mark.parametrize("bad", ["missing", "shape", "dtype", "non_contiguous", "step"])
def test_state_that_does_not_fit_raises(device, bad):
    # docs/spec.md §8: adam's state must be two contiguous float32 tables of weight's shape and
    # step a 0-dim int64: anything else is a RuntimeError from the forward.
    weight = torch.randn(10, 4, device=device, requires_grad=True)
    step = torch.zeros((), dtype=torch.int64, device=device)
    if bad == "step":
        state = initial_state("adam", weight, {})
        step = torch.zeros(1, dtype=torch.int64, device=device)
    else:
        state = _bad_states(weight)[bad]
    w0 = weight.detach().clone()
    with pytest.raises(RuntimeError):
        out = mybag.fused_embedding_bag(torch.tensor([1, 2, 3], device=device), weight, state,
                                        step, torch.tensor([0, 1], device=device),
                                        optimizer="adam")
        out.sum().backward()
    assert torch.equal(weight.detach(), w0)


# ---------------------------------------------------------------------------------------------
# The functional form


def initial_state(optimizer, weight, hp):
    num, dim = weight.shape
    sdt = torch.float64 if weight.dtype == torch.float64 else torch.float32
    init = float(hp.get("initial_accumulator_value", 0.0))
    return {
        "sgd": [],
        "adagrad": [torch.full((num, dim), init, dtype=sdt, device=weight.device)],
        "rowwise_adagrad": [torch.full((num,), init, dtype=sdt, device=weight.device)],
        "adam": [torch.zeros(num, dim, dtype=sdt, device=weight.device),
                 torch.zeros(num, dim, dtype=sdt, device=weight.device)],
    }[optimizer]


@pytest.mark.parametrize("cfg", [CFG["sum_2d_psw"], CFG["max_2d_negpad_i32"],
                                 CFG["mean_freq_negpad"]], ids=str)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_functional_form(device, optimizer, cfg):
    dtype = torch.float64
    hp = {**DEFAULTS[optimizer], **HP[optimizer], "weight_decay": 0.05}
    weight0 = cfg.table(device, dtype)
    weight = weight0.clone().requires_grad_()
    state = initial_state(optimizer, weight, hp)
    step = torch.zeros((), dtype=torch.int64, device=device)
    ref = TorchReference(weight0, cfg, optimizer, hp)
    kwargs = {k: v for k, v in hp.items() if k != "initial_accumulator_value"}
    for k, b in enumerate(cfg.batches(device, dtype, steps=3)):
        out = mybag.fused_embedding_bag(b.input, weight, state, step, b.offsets,
                                        max_norm=cfg.max_norm, norm_type=cfg.norm_type,
                                        scale_grad_by_freq=cfg.scale_grad_by_freq,
                                        mode=cfg.mode, per_sample_weights=b.psw,
                                        include_last_offset=cfg.include_last_offset,
                                        padding_idx=cfg.padding_idx, optimizer=optimizer,
                                        **kwargs)
        out.backward(b.grad_output)
        ref.step(b)
        msg = f"{optimizer} {cfg} step {k + 1}"
        assert weight.grad is None, msg
        close(weight, ref.weight, WEIGHT_TOL[dtype], f"{msg}: weight")
        for tensor, (name, expected) in zip(state, ref.state().items(), strict=True):
            close(tensor, expected, STATE_TOL[dtype], f"{msg}: {name}")
        assert int(step) == k + 1, msg


# ---------------------------------------------------------------------------------------------
# The reference itself


def test_rowwise_reference_is_adagrad_when_dim_is_one():
    """With one column, the row mean of g^2 is g^2: the written-out rowwise_adagrad reference
    must then agree with torch.optim.Adagrad (a check of the reference, not of mybag)."""
    cfg = Cfg("dim1", mode="sum", dim=1, psw=True)
    dtype = torch.float64
    weight0 = cfg.table("cpu", dtype)
    hp = {"lr": 0.2, "eps": 1e-10, "initial_accumulator_value": 0.3}
    rowwise = TorchReference(weight0, cfg, "rowwise_adagrad", hp)
    adagrad = TorchReference(weight0, cfg, "adagrad", {**hp, "lr_decay": 0.0})
    for b in cfg.batches("cpu", dtype):
        rowwise.step(b)
        adagrad.step(b)
    assert not torch.equal(rowwise.weight, weight0)
    torch.testing.assert_close(rowwise.weight, adagrad.weight, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(rowwise.sum, adagrad.state()["sum"][:, 0], rtol=1e-14, atol=1e-14)


def test_reference_weight_decay_touches_only_touched_rows():
    # The reference decays only the rows the batch names (not the padding row): checked here so
    # that the comparisons above test the contract's lazy L2.
    cfg = CFG["mean_2d_pad"]
    weight0 = cfg.table("cpu", torch.float64)
    ref = TorchReference(weight0, cfg, "sgd", {"lr": 0.1, "weight_decay": 0.5})
    b = cfg.batch(0, "cpu", torch.float64)
    ref.step(b)
    rows = touched_rows(b.input, cfg.padding_idx, cfg.num_embeddings)
    untouched = torch.ones(cfg.num_embeddings, dtype=torch.bool)
    untouched[rows] = False
    assert untouched[cfg.padding_idx]
    assert torch.equal(ref.weight[untouched], weight0[untouched])
    grad = reference_weight_grad(b.grad_output, b.input, weight0, b.offsets, mode=cfg.mode,
                                 padding_idx=cfg.padding_idx)
    expected = weight0[rows] - 0.1 * (grad[rows] + 0.5 * weight0[rows])
    torch.testing.assert_close(ref.weight[rows], expected, rtol=1e-12, atol=1e-12)


def test_reference_max_mode_gradient_covers_every_touched_row():
    # In max mode a row may win no feature: it is still touched, with a zero gradient row (the
    # max configurations above contain such rows, so Adam's decay of them is compared).
    cfg = CFG["max_2d_negpad_i32"]
    table = cfg.table("cpu", torch.float64)
    ref = TorchReference(table, cfg, "sgd", {"lr": 0.0})
    zero_rows = 0
    for b in cfg.batches("cpu", torch.float64):
        _, values, rows = ref.gradient(b)
        assert torch.equal(rows, touched_rows(b.input, cfg.padding_idx, cfg.num_embeddings))
        expected = reference_weight_grad(b.grad_output, b.input, table, b.offsets, mode="max",
                                         padding_idx=cfg.padding_idx)
        torch.testing.assert_close(values, expected[rows], rtol=1e-14, atol=1e-14)
        zero_rows += int((values == 0).all(1).sum())
    assert zero_rows > 0


@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise_adagrad", "adam"])
def test_dtype_conversion_keeps_the_state_dtype_the_op_takes(optimizer):
    # .half()/.double() convert floating buffers; the state must follow the table's rule
    # (float32, float64 for a float64 table: docs/spec.md §8), converted once from the original,
    # and the module must keep training.
    m = mybag.FusedEmbeddingBag(20, 4, mode="sum", optimizer=optimizer, lr=0.1,
                                initial_accumulator_value=0.3)
    original = [t.clone() for t in m.optimizer_state()]
    m.half()
    assert m.weight.dtype == torch.float16 and m.step.dtype == torch.int64
    for before, after in zip(original, m.optimizer_state()):
        assert after.dtype == torch.float32
        torch.testing.assert_close(after, before, rtol=0, atol=0)
    m(torch.tensor([1, 2, 3]), torch.tensor([0])).float().sum().backward()
    assert int(m.step) == 1
    m.double()
    assert all(t.dtype == torch.float64 for t in m.optimizer_state())
    m(torch.tensor([1, 2, 3]), torch.tensor([0])).sum().backward()
    assert int(m.step) == 2
