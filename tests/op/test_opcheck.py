"""torch.library.opcheck for every mybag operator (docs/spec.md §7), on every device, and the
dispatcher registrations each operator is expected to have."""

import zlib
from dataclasses import dataclass

import mybag  # noqa: F401  (registers torch.ops.mybag)
import pytest
import torch
import torch.nn.functional as F

ops = torch.ops.mybag

INTERNAL_OPS = [
    "_embedding_bag_renorm_",
    "_embedding_bag_forward",
    "_embedding_bag_dense_backward",
    "_embedding_bag_per_entry_grad",
    "_embedding_bag_per_sample_weights_backward",
]
# The ops with a kernel per device (and a Meta kernel): the internal ops above, the fused
# optimizers' update (its own opcheck tests are in test_fused_opcheck.py) and the quantized
# forward (test_quantized.py). The fused forward is CompositeExplicitAutograd: below autograd
# it is the plain forward.
DEVICE_KERNEL_OPS = INTERNAL_OPS + ["_embedding_bag_fused_update_", "_quantized_embedding_bag_forward"]
# quantize_rowwise is written once in ATen operations (CompositeExplicitAutograd) for every
# device, with a Meta kernel of its own for symbolic shapes.
META_ONLY_OPS = ["quantize_rowwise"]
MODES = {"sum": 0, "mean": 1, "max": 2}
NUM_EMBEDDINGS = 12
DIM = 5


@dataclass(frozen=True)
class Sample:
    shape: str = "1d"  # "1d": input (N,) with offsets; "2d": input (B, L)
    mode: str = "sum"
    index_dtype: torch.dtype = torch.int64
    offsets_dtype: torch.dtype | None = None  # None: input's dtype
    dtype: torch.dtype = torch.float32
    padding_idx: int | None = None
    psw: bool = False
    include_last_offset: bool = False
    max_norm: float | None = None
    norm_type: float = 2.0
    scale_grad_by_freq: bool = False
    sparse: bool = False
    empty_bag: bool = False

    @property
    def id(self):
        parts = [self.shape, self.mode, str(self.index_dtype).replace("torch.", ""),
                 str(self.dtype).replace("torch.", "")]
        for name in ["padding_idx", "max_norm", "offsets_dtype"]:
            if getattr(self, name) is not None:
                parts.append(f"{name}={getattr(self, name)}")
        for name in ["psw", "include_last_offset", "scale_grad_by_freq", "sparse", "empty_bag"]:
            if getattr(self, name):
                parts.append(name)
        return "-".join(parts)

    def tensors(self, device):
        """input, weight, offsets, per_sample_weights (no requires_grad yet)."""
        gen = torch.Generator().manual_seed(zlib.crc32(self.id.encode()))
        weight = torch.randn(NUM_EMBEDDINGS, DIM, generator=gen, dtype=torch.float64) * 2
        if self.shape == "2d":
            inp = torch.randint(0, NUM_EMBEDDINGS, (3, 4), generator=gen)
            offsets = None
        else:
            inp = torch.randint(0, NUM_EMBEDDINGS, (9,), generator=gen)
            offsets = [0, 2, 2, 6] if self.empty_bag else [0, 2, 5, 6]
            if self.include_last_offset:
                offsets = offsets + [9]  # the last bag ends at N (docs/spec.md §2)
            offsets = torch.tensor(offsets, dtype=self.offsets_dtype or self.index_dtype)
        if self.padding_idx is not None:
            pad_row = self.padding_idx % NUM_EMBEDDINGS
            inp.view(-1)[[0, 3, 4]] = pad_row
        inp = inp.to(self.index_dtype)
        psw = torch.rand(inp.shape, generator=gen, dtype=torch.float64) if self.psw else None
        to = lambda t: None if t is None else t.to(device)
        return (to(inp), to(weight.to(self.dtype)), to(offsets),
                to(None if psw is None else psw.to(self.dtype)))

    def num_bags(self, inp, offsets):
        if offsets is None:
            return inp.shape[0]
        return offsets.numel() - int(self.include_last_offset)


SAMPLES = [
    Sample(),
    Sample(mode="mean", index_dtype=torch.int32),
    Sample(mode="max"),
    Sample(shape="2d", mode="sum", psw=True),
    Sample(shape="2d", mode="mean", padding_idx=2),
    Sample(shape="2d", mode="max", index_dtype=torch.int32, padding_idx=-3),
    Sample(mode="sum", psw=True, padding_idx=7, index_dtype=torch.int32),
    Sample(mode="mean", include_last_offset=True),
    Sample(mode="max", include_last_offset=True, empty_bag=True, index_dtype=torch.int32),
    Sample(mode="mean", empty_bag=True, padding_idx=0),
    Sample(mode="sum", dtype=torch.float64, psw=True),
    Sample(shape="2d", mode="mean", dtype=torch.float64),
    Sample(mode="max", dtype=torch.float64, padding_idx=4),
    Sample(mode="sum", scale_grad_by_freq=True),
    Sample(shape="2d", mode="mean", scale_grad_by_freq=True, padding_idx=1),
    Sample(mode="sum", sparse=True),
    Sample(mode="mean", sparse=True, scale_grad_by_freq=True, index_dtype=torch.int32),
    Sample(mode="sum", sparse=True, padding_idx=2, psw=True),
    Sample(shape="2d", mode="mean", sparse=True, padding_idx=-1),
]
# Half precision: opcheck compares eager with traced runs of the same kernel, so tolerances are
# not an issue; kept few because each one costs compile time.
LOW_PRECISION_SAMPLES = [
    Sample(mode="sum", dtype=torch.bfloat16, psw=True),
    Sample(shape="2d", mode="max", dtype=torch.float16),
    Sample(mode="mean", dtype=torch.float16, padding_idx=3),
]
# Only for the public op: max_norm (renorm_ runs inside it) and mixed index dtypes (promoted by
# the public op, rejected by the internal ones).
PUBLIC_ONLY_SAMPLES = [
    Sample(mode="sum", max_norm=1.0),
    Sample(shape="2d", mode="max", max_norm=0.7, norm_type=1.0),
    Sample(mode="mean", max_norm=1.5, padding_idx=2, include_last_offset=True),
    Sample(mode="sum", index_dtype=torch.int32, offsets_dtype=torch.int64, psw=True),
    Sample(mode="mean", index_dtype=torch.int64, offsets_dtype=torch.int32),
]
ALL = SAMPLES + LOW_PRECISION_SAMPLES


def _ids(samples):
    return [s.id for s in samples]


def _rg(t, requires_grad):
    return None if t is None else t.detach().requires_grad_(requires_grad)


# ---------------------------------------------------------------------------------------------
# The public operator


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("s", ALL + PUBLIC_ONLY_SAMPLES, ids=_ids(ALL + PUBLIC_ONLY_SAMPLES))
def test_opcheck_embedding_bag(s, device, requires_grad):
    inp, weight, offsets, psw = s.tensors(device)
    args = (inp, _rg(weight, requires_grad), offsets, s.max_norm, s.norm_type,
            s.scale_grad_by_freq, s.mode, s.sparse, _rg(psw, requires_grad),
            s.include_last_offset, s.padding_idx)
    torch.library.opcheck(ops.embedding_bag.default, args)


def test_opcheck_embedding_bag_checks_something():
    """opcheck is not vacuous here: the public op's result on a sample equals torch's."""
    s = Sample(mode="mean", padding_idx=2, psw=False)
    inp, weight, offsets, _ = s.tensors("cpu")
    out = ops.embedding_bag(inp, weight, offsets, None, 2.0, False, "mean", False, None, False, 2)
    ref = F.embedding_bag(inp, weight, offsets, mode="mean", padding_idx=2)
    torch.testing.assert_close(out, ref)


# ---------------------------------------------------------------------------------------------
# Internal operators


def forward_args(s: Sample, device, requires_grad=False):
    inp, weight, offsets, psw = s.tensors(device)
    return (_rg(weight, requires_grad), inp, offsets, _rg(psw, requires_grad), MODES[s.mode],
            s.padding_idx, s.include_last_offset, s.scale_grad_by_freq, s.sparse)


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("s", ALL, ids=_ids(ALL))
def test_opcheck_forward(s, device, requires_grad):
    torch.library.opcheck(ops._embedding_bag_forward.default,
                          forward_args(s, device, requires_grad))


@pytest.mark.parametrize("s", ALL, ids=_ids(ALL))
def test_opcheck_renorm(s, device):
    inp, weight, offsets, _ = s.tensors(device)
    for max_norm, norm_type in [(1.0, 2.0), (0.5, 1.0), (2.0, float("inf"))]:
        torch.library.opcheck(ops._embedding_bag_renorm_.default,
                              (weight.clone(), inp, offsets, s.include_last_offset, max_norm,
                               norm_type))


def backward_inputs(s: Sample, device):
    """The forward's outputs for s, and a gradient for them."""
    weight, inp, offsets, psw, mode, padding_idx, ilo, sgbf, sparse = forward_args(s, device)
    out, max_indices = ops._embedding_bag_forward(weight, inp, offsets, psw, mode, padding_idx,
                                                  ilo, sgbf, sparse)
    grad = torch.randn(out.shape, dtype=torch.float64).to(dtype=out.dtype, device=device)
    return weight, inp, offsets, psw, max_indices, grad


def dense_backward_args(s, device):
    weight, inp, offsets, psw, max_indices, grad = backward_inputs(s, device)
    return (grad, inp, offsets, psw, max_indices, weight.shape[0], MODES[s.mode], s.padding_idx,
            s.include_last_offset, s.scale_grad_by_freq)


def per_entry_grad_args(s, device):
    weight, inp, offsets, psw, _, grad = backward_inputs(s, device)
    return (grad, inp, offsets, psw, weight.shape[0], MODES[s.mode], s.padding_idx,
            s.include_last_offset, s.scale_grad_by_freq)


def psw_backward_args(s, device):
    weight, inp, offsets, _, _, grad = backward_inputs(s, device)
    return (grad, weight, inp, offsets, MODES[s.mode], s.padding_idx, s.include_last_offset)


NOT_MAX = [s for s in ALL if s.mode != "max"]
SUM = [s for s in ALL if s.mode == "sum"]


@pytest.mark.parametrize("s", ALL, ids=_ids(ALL))
def test_opcheck_dense_backward(s, device):
    torch.library.opcheck(ops._embedding_bag_dense_backward.default, dense_backward_args(s, device))


@pytest.mark.parametrize("s", NOT_MAX, ids=_ids(NOT_MAX))
def test_opcheck_per_entry_grad(s, device):
    torch.library.opcheck(ops._embedding_bag_per_entry_grad.default,
                          per_entry_grad_args(s, device))


@pytest.mark.parametrize("s", SUM, ids=_ids(SUM))
def test_opcheck_per_sample_weights_backward(s, device):
    torch.library.opcheck(ops._embedding_bag_per_sample_weights_backward.default,
                          psw_backward_args(s, device))


# The backward ops and renorm_ have no derivative: they are never differentiated (double
# backward is rejected, see test_errors.py). Running them on inputs that require grad must not
# produce outputs claiming a gradient that is silently wrong: either they do not require grad,
# or differentiating them raises.
BACKWARD_OPS = {
    "_embedding_bag_dense_backward": dense_backward_args,
    "_embedding_bag_per_entry_grad": per_entry_grad_args,
    "_embedding_bag_per_sample_weights_backward": psw_backward_args,
}


def _backward_args_with_grad_requiring_grad(name, device):
    s = Sample(mode="sum", psw=name != "_embedding_bag_per_sample_weights_backward")
    args = list(BACKWARD_OPS[name](s, device))
    args[0] = args[0].detach().requires_grad_()  # grad
    return args


@pytest.mark.parametrize("name", list(BACKWARD_OPS))
def test_backward_ops_are_not_silently_differentiable(name):
    args = _backward_args_with_grad_requiring_grad(name, "cpu")
    out = getattr(ops, name)(*args)
    if not out.requires_grad:
        return
    with pytest.raises(RuntimeError, match=rf"(?i)derivative.*{name}.*not implemented"):
        torch.autograd.grad(out.sum(), args[0])


@pytest.mark.parametrize("name", list(BACKWARD_OPS))
def test_opcheck_backward_ops_with_requires_grad(name, device):
    """With a grad that requires grad, every opcheck test passes except the one that
    differentiates the op (test_aot_dispatch_dynamic), which fails with the op's own "not
    implemented" error: the backward ops are deliberately not differentiable (double backward is
    not supported, docs/spec.md §5), and say so instead of returning a wrong value."""
    args = _backward_args_with_grad_requiring_grad(name, device)
    results = torch.library.opcheck(getattr(ops, name).default, tuple(args),
                                    raise_exception=False)
    for test in ["test_schema", "test_autograd_registration", "test_faketensor"]:
        assert results[test] == "SUCCESS", (test, results[test])
    err = results["test_aot_dispatch_dynamic"]
    assert isinstance(err, RuntimeError), err
    assert f"derivative for mybag::{name} is not implemented" in str(err), str(err)


# ---------------------------------------------------------------------------------------------
# Dispatcher registrations


def _registered(key):
    return {name for name in torch._C._dispatch_get_registrations_for_dispatch_key(key)
            if name.startswith("mybag::")}


def test_cpu_kernels_are_exactly_the_internal_ops():
    assert _registered("CPU") == {f"mybag::{name}" for name in DEVICE_KERNEL_OPS}


@pytest.mark.skipif(torch.version.cuda is None, reason="torch without CUDA cannot hold CUDA kernels")
def test_every_op_with_a_cpu_kernel_has_a_cuda_kernel():
    """Runs on CPU-only machines too: a CUDA torch plus nvcc must have built the CUDA kernels
    (CI builds them without a GPU), and none may be missing."""
    assert _registered("CUDA") == _registered("CPU")


def test_meta_kernels_are_exactly_the_internal_ops():
    assert _registered("Meta") == {f"mybag::{name}" for name in DEVICE_KERNEL_OPS + META_ONLY_OPS}


def test_fused_ops_registrations():
    assert "mybag::fused_embedding_bag" in _registered("CompositeImplicitAutograd")
    assert "mybag::_embedding_bag_fused_forward" in _registered("CompositeExplicitAutograd")
    # Its autograd node is what steps the optimizer, from Python, TorchScript and C++ alike.
    assert torch._C._dispatch_has_kernel_for_dispatch_key("mybag::_embedding_bag_fused_forward",
                                                          "Autograd")


def test_public_op_is_composite_implicit_autograd():
    assert "mybag::embedding_bag" in _registered("CompositeImplicitAutograd")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(
        "mybag::embedding_bag", "CompositeImplicitAutograd")


def test_forward_has_an_autograd_kernel():
    # Registered in C++ (a torch::autograd::Function), so LibTorch programs can train.
    assert torch._C._dispatch_has_kernel_for_dispatch_key("mybag::_embedding_bag_forward",
                                                          "Autograd")


def test_every_schema_is_as_documented():
    expected = {
        "embedding_bag": "mybag::embedding_bag(Tensor input, Tensor weight, Tensor? offsets=None, "
        "float? max_norm=None, float norm_type=2., bool scale_grad_by_freq=False, "
        "str mode=\"mean\", bool sparse=False, Tensor? per_sample_weights=None, "
        "bool include_last_offset=False, int? padding_idx=None) -> Tensor",
    }
    for name, schema in expected.items():
        assert str(getattr(ops, name).default._schema) == schema
    renorm = ops._embedding_bag_renorm_.default._schema
    assert renorm.arguments[0].alias_info is not None and renorm.arguments[0].alias_info.is_write
    assert len(renorm.returns) == 0
    update = ops._embedding_bag_fused_update_.default._schema
    written = [a.name for a in update.arguments if a.alias_info is not None and a.alias_info.is_write]
    assert written == ["weight", "state", "step"] and len(update.returns) == 0
    for name in INTERNAL_OPS[1:] + ["fused_embedding_bag", "_embedding_bag_fused_forward",
                                    "quantized_embedding_bag", "_quantized_embedding_bag_forward",
                                    "quantize_rowwise"]:
        schema = getattr(ops, name).default._schema
        assert not any(a.alias_info is not None and a.alias_info.is_write
                       for a in schema.arguments), f"{name} must not mutate its arguments"
