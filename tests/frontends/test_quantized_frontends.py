"""mybag.QuantizedEmbeddingBag (issue 15, /work/quant_api.md) through its ways in: built from
float modules and tensors (``from_float``) and from torch's quantized module (``from_torch``),
state_dict, TorchScript, torch.export, torch.compile, and on CUDA.

What is compared against what:

* Building: the module's packed table against torch's own packing
  (``quantized::embedding_bag_byte_prepack`` / ``embedding_bag_4bit_prepack``) of the source's
  table, bit for bit; its options against the source module's.
* Outputs: against the written-out dequantized table (``q * scale + bias`` read from the packed
  bytes, float64) run through ``F.embedding_bag`` in float64, with the tolerance of
  tests/op/test_quantized.py: ``|got - ref| <= RTOL * M``, M the same reduction over the bag of
  the magnitudes of the float32 kernel's terms (|w| * (|scale * q| + |bias|)); 1e-5 covers the
  (n + 2) float32 roundings of bags of up to 80 entries, and the bags here have at most 8.
* from_torch: against torch's quantized module itself, bit for bit, in sum mode (the contract
  fixes FBGEMM's order); in mean mode torch's module returns the sum (torch 2.14.1 ignores the
  mode), so mybag is compared with the dequantized reference and torch's result is shown to be
  wrong next to it.
* The tools (script, export, compile, state_dict, CUDA): against the eager CPU module, bit for
  bit: they run the same kernels on the same bytes.
"""

from __future__ import annotations

import copy
import io

import mybag
import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
import torch.ao.nn.quantized as nnq
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import (
    float_qparams_weight_only_qconfig,
    float_qparams_weight_only_qconfig_4bit,
)

QEB = mybag.QuantizedEmbeddingBag
tq = torch.ops.quantized

BITS = [8, 4]
MODES = ["sum", "mean", "max"]
RTOL = 1e-5
NUM_EMBEDDINGS = 20
DIM = 10
QCONFIGS = {8: float_qparams_weight_only_qconfig, 4: float_qparams_weight_only_qconfig_4bit}


# ---------------------------------------------------------------------------------------------
# Helpers


def torch_prepack(weight: torch.Tensor, bits: int) -> torch.Tensor:
    w = weight.detach().cpu()
    return tq.embedding_bag_byte_prepack(w) if bits == 8 else tq.embedding_bag_4bit_prepack(w)


def unpack(packed: torch.Tensor, bits: int):
    """q (E, D), scale (E, 1), bias (E, 1) in float64, read from torch's packed layout."""
    p = packed.detach().cpu()
    if bits == 8:
        d = p.shape[1] - 8
        q = p[:, :d].double()
        qparams = p[:, d:].contiguous().view(torch.float32).double()
    else:
        half = p.shape[1] - 4
        b = p[:, :half].to(torch.int64)
        q = torch.stack([b & 0x0F, b >> 4], dim=-1).reshape(p.shape[0], 2 * half).double()
        qparams = p[:, half:].contiguous().view(torch.float16).double()
    return q, qparams[:, :1], qparams[:, 1:]


def reference(packed, bits, input, offsets=None, mode="mean", per_sample_weights=None,
              include_last_offset=False, padding_idx=None):
    """(output, magnitude) in float64: F.embedding_bag over the dequantized table, and over the
    magnitudes of the terms the float32 kernel adds."""
    q, scale, bias = unpack(packed, bits)
    inp = input.cpu().long()
    offs = None if offsets is None else offsets.cpu().long()
    psw = None if per_sample_weights is None else per_sample_weights.detach().cpu().double()
    kw = {"mode": mode, "include_last_offset": include_last_offset, "padding_idx": padding_idx}
    ref = F.embedding_bag(inp, q * scale + bias, offs, per_sample_weights=psw, **kw)
    mag = F.embedding_bag(inp, (q * scale).abs() + bias.abs(), offs,
                          per_sample_weights=None if psw is None else psw.abs(), **kw)
    return ref, mag


def assert_within(got, expected, bound, msg):
    assert got.shape == expected.shape, \
        f"{msg}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    err = (got.detach().cpu().double() - expected).abs()
    bad = ~(err <= bound)
    if bad.any():
        i = tuple(int(k) for k in bad.nonzero()[0])
        raise AssertionError(
            f"{msg}: {int(bad.sum())} of {bad.numel()} elements off; first at {i}: got "
            f"{float(got.detach().cpu()[i])!r}, expected {float(expected[i])!r}, |error| "
            f"{float(err[i]):.3g} > bound {float(bound[i]):.3g}")


def assert_matches(got, ref, mag, msg, dtype=torch.float32):
    assert got.dtype == dtype, f"{msg}: dtype {got.dtype} != {dtype}"
    assert_within(got, ref, RTOL * mag, msg)


def assert_same(got, expected, msg=""):
    torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=lambda m: f"{msg}\n{m}")


def batch_1d(seed=0, device="cpu", num_bags=5, padding_idx=None, include_last_offset=False,
             psw=False, num_embeddings=NUM_EMBEDDINGS):
    """input (N,), offsets, per_sample_weights or None: bags of 0 to 8 entries (bag 1 empty);
    with a padding_idx, every third entry is padding."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 9, (num_bags,), generator=g)
    sizes[1] = 0
    inp = torch.randint(0, num_embeddings, (int(sizes.sum()),), generator=g)
    if padding_idx is not None:
        inp[::3] = padding_idx % num_embeddings
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)[:-1]])
    if include_last_offset:
        offsets = torch.cat([offsets, torch.tensor([inp.numel()])])
    p = torch.randn(inp.shape, generator=g) if psw else None
    to = lambda t: None if t is None else t.to(device)
    return to(inp), to(offsets), to(p)


def batch_2d(seed=0, device="cpu", num_bags=4, bag_len=5, padding_idx=None,
             num_embeddings=NUM_EMBEDDINGS):
    g = torch.Generator().manual_seed(seed)
    inp = torch.randint(0, num_embeddings, (num_bags, bag_len), generator=g)
    if padding_idx is not None:
        inp[:, ::2] = padding_idx % num_embeddings
    return inp.to(device)


def float_table(seed=0, rows=NUM_EMBEDDINGS, dim=DIM, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, dim, generator=g) * scale


def check_module_output(qm, bits, mode, padding_idx=None, include_last_offset=False, psw=False,
                        msg=""):
    """qm's output on a 1-D batch and a 2-D batch against the reference of its packed table."""
    inp, offsets, p = batch_1d(padding_idx=padding_idx, include_last_offset=include_last_offset,
                               psw=psw)
    out = qm(inp, offsets, p)
    ref, mag = reference(qm.packed_weight, bits, inp, offsets, mode, p, include_last_offset,
                         padding_idx)
    assert_matches(out, ref, mag, f"{msg} 1-D")
    x = batch_2d(padding_idx=padding_idx)
    ref, mag = reference(qm.packed_weight, bits, x, None, mode, None, False, padding_idx)
    assert_matches(qm(x), ref, mag, f"{msg} 2-D")


# ---------------------------------------------------------------------------------------------
# from_float


FLOAT_OPTIONS = [
    {"mode": "sum"},
    {"mode": "mean", "padding_idx": 3},
    {"mode": "max", "include_last_offset": True},
    {"mode": "sum", "padding_idx": -2, "include_last_offset": True},
]
FLOAT_IDS = ["sum", "mean-pad3", "max-ilo", "sum-negpad-ilo"]


@pytest.mark.parametrize("source", ["torch", "mybag"])
@pytest.mark.parametrize("options", FLOAT_OPTIONS, ids=FLOAT_IDS)
@pytest.mark.parametrize("bits", BITS)
def test_from_float_module(bits, options, source):
    cls = nn.EmbeddingBag if source == "torch" else mybag.EmbeddingBag
    torch.manual_seed(0)
    src = cls(NUM_EMBEDDINGS, DIM, **options)
    qm = QEB.from_float(src, bits=bits)
    assert isinstance(qm, QEB)
    assert (qm.num_embeddings, qm.embedding_dim, qm.bits) == (NUM_EMBEDDINGS, DIM, bits)
    assert qm.mode == options["mode"]
    assert qm.include_last_offset == options.get("include_last_offset", False)
    assert qm.padding_idx == src.padding_idx  # non-negative, as torch stores it
    if "padding_idx" in options:
        assert qm.padding_idx == options["padding_idx"] % NUM_EMBEDDINGS
    assert qm.output_dtype == torch.float32
    assert qm.packed_weight.dtype == torch.uint8
    assert torch.equal(qm.packed_weight, torch_prepack(src.weight, bits))
    check_module_output(qm, bits, options["mode"], options.get("padding_idx"),
                        options.get("include_last_offset", False),
                        psw=options["mode"] == "sum", msg=f"{source} {options} bits={bits}")


@pytest.mark.parametrize("bits", BITS)
def test_from_float_keywords_override_the_module(bits):
    src = nn.EmbeddingBag(NUM_EMBEDDINGS, DIM, mode="sum", padding_idx=1)
    qm = QEB.from_float(src, bits=bits, mode="max", include_last_offset=True, padding_idx=-3,
                        output_dtype=torch.float16)
    assert qm.mode == "max" and qm.include_last_offset
    assert qm.padding_idx == NUM_EMBEDDINGS - 3
    assert qm.output_dtype == torch.float16
    inp, offsets, _ = batch_1d(include_last_offset=True, padding_idx=-3)
    out = qm(inp, offsets)
    assert out.dtype == torch.float16
    ref, mag = reference(qm.packed_weight, bits, inp, offsets, "max", None, True, -3)
    # float16 output: the float32 result rounded once, so one float16 rounding (at most half a
    # float16 step: eps/2 relative, or half the subnormal spacing 2**-24) off it.
    bound = ref.abs() * torch.finfo(torch.float16).eps / 2 + 2.0**-25 + RTOL * mag
    assert_within(out, ref, bound, "max float16")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("bits", BITS)
def test_from_float_tensor(bits, dtype):
    w = float_table(1).to(dtype)
    qm = QEB.from_float(w, bits=bits)
    assert qm.mode == "mean"  # the constructor's default
    assert qm.include_last_offset is False and qm.padding_idx is None
    assert torch.equal(qm.packed_weight, torch_prepack(w.float(), bits))
    check_module_output(qm, bits, "mean", msg=f"tensor {dtype} bits={bits}")
    for mode in MODES:
        qm = QEB.from_float(w, bits=bits, mode=mode)
        assert qm.mode == mode
        check_module_output(qm, bits, mode, msg=f"tensor {mode} bits={bits}")


def test_from_float_default_bits_is_8():
    w = float_table(2)
    qm = QEB.from_float(w)
    assert qm.bits == 8
    assert torch.equal(qm.packed_weight, torch_prepack(w, 8))


def test_from_float_odd_dim_4_bits_names_embedding_dim():
    with pytest.raises(ValueError, match="(?s)embedding_dim.*7|7.*embedding_dim"):
        QEB.from_float(float_table(0, dim=7), bits=4)


def _renorm_torch(weight, max_norm, norm_type):
    w = weight.detach().clone()
    torch.embedding_renorm_(w, torch.arange(w.shape[0]), max_norm, norm_type)
    return w


def _renorm_mybag(weight, max_norm, norm_type):
    w = weight.detach().clone()
    mybag.embedding_bag(torch.arange(w.shape[0]), w, torch.tensor([0]), max_norm=max_norm,
                        norm_type=norm_type)
    return w


@pytest.mark.parametrize("source", ["torch", "mybag"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bits", BITS)
def test_from_float_applies_max_norm(bits, mode, source):
    """The source's max_norm is applied to every row before quantizing. Precisely: the packed
    table is the packing of the renormalized table, renormalized as the source's lookup would
    (torch.embedding_renorm_ for nn.EmbeddingBag; mybag's, which may differ in the last bit,
    accepted for either source), and the output is the reference of that packed table. And,
    the point of it: the output is that of nn.EmbeddingBag(max_norm=...) up to the quantization
    error of the rows in the bag."""
    max_norm, norm_type = 1.5, 2.0
    cls = nn.EmbeddingBag if source == "torch" else mybag.EmbeddingBag
    src = cls(NUM_EMBEDDINGS, DIM, mode=mode, max_norm=max_norm, norm_type=norm_type,
              _weight=float_table(3, scale=1.0))
    renormed = [f(src.weight, max_norm, norm_type) for f in (_renorm_torch, _renorm_mybag)]
    # Not vacuous: most rows are renormalized.
    assert int((renormed[0].norm(dim=1) < src.weight.detach().norm(dim=1) - 1e-3).sum()) > 10
    qm = QEB.from_float(src, bits=bits)
    candidates = [torch_prepack(r, bits) for r in renormed]
    assert any(torch.equal(qm.packed_weight, c) for c in candidates), \
        "packed_weight is not the packing of the renormalized table"
    check_module_output(qm, bits, mode, msg=f"max_norm {source} {mode} bits={bits}")

    # Against the float module renormalizing at lookup, up to the quantization error.
    inp, offsets, _ = batch_1d(seed=4)
    lookup = nn.EmbeddingBag(NUM_EMBEDDINGS, DIM, mode=mode, max_norm=max_norm,
                             norm_type=norm_type, _weight=src.weight.detach().clone())
    expected = lookup(inp, offsets).detach().double()
    q, scale, bias = unpack(qm.packed_weight, bits)
    row_error = (q * scale + bias - renormed[0].double()).abs()
    bound = F.embedding_bag(inp, row_error, offsets, mode=mode) + 1e-5
    assert_within(qm(inp, offsets), expected, bound, f"vs lookup max_norm {mode} bits={bits}")


# ---------------------------------------------------------------------------------------------
# from_torch


def torch_quantized_module(bits, mode="sum", include_last_offset=False, seed=0):
    torch.manual_seed(seed)
    src = nn.EmbeddingBag(NUM_EMBEDDINGS, DIM, mode=mode, include_last_offset=include_last_offset)
    src.qconfig = QCONFIGS[bits]
    return nnq.EmbeddingBag.from_float(src)


def packed_bytes_of(m) -> torch.Tensor:
    """torch's quantized module's table in the packed layout, rebuilt from its quantized weight
    as torch's own packing does (values, float scale, bias = -zero_point * scale; float16 scale
    and bias for 4 bits). test_from_torch_packed_bytes_are_torchs checks, with torch's op, that
    the rebuilt table is the module's."""
    w = m.weight()
    scale = w.q_per_channel_scales().float()
    bias = w.q_per_channel_zero_points().float() * scale * -1
    rows = w.shape[0]
    q = w.int_repr().reshape(rows, -1)
    if w.dtype == torch.quint8:
        qparams = torch.stack([scale, bias], 1)
    else:
        qparams = torch.stack([scale.half(), bias.half()], 1)
    return torch.cat([q, qparams.contiguous().view(torch.uint8)], 1)


@pytest.mark.parametrize("bits", BITS)
def test_from_torch_packed_bytes_are_torchs(bits):
    """The helper above is right: torch's op on the rebuilt table gives the module's bits."""
    m = torch_quantized_module(bits)
    inp, offsets, p = batch_1d(psw=True)
    op = (tq.embedding_bag_byte_rowwise_offsets if bits == 8
          else tq.embedding_bag_4bit_rowwise_offsets)
    assert_same(op(packed_bytes_of(m), inp, offsets, False, 0, False, p, None, False),
                m(inp, offsets, p))


@pytest.mark.parametrize("include_last_offset", [False, True], ids=["", "ilo"])
@pytest.mark.parametrize("bits", BITS)
def test_from_torch_sum_equals_torch_module(bits, include_last_offset):
    m = torch_quantized_module(bits, "sum", include_last_offset)
    qm = QEB.from_torch(m)
    assert (qm.bits, qm.mode, qm.include_last_offset, qm.padding_idx) == (
        bits, "sum", include_last_offset, None)
    assert (qm.num_embeddings, qm.embedding_dim) == (NUM_EMBEDDINGS, DIM)
    assert torch.equal(qm.packed_weight, packed_bytes_of(m)), "not torch's values and qparams"
    for psw in [False, True]:
        inp, offsets, p = batch_1d(include_last_offset=include_last_offset, psw=psw)
        assert_same(qm(inp, offsets, p), m(inp, offsets, p), f"bits={bits} psw={psw}")
    x = batch_2d()
    if include_last_offset:
        # 2-D input ignores include_last_offset (docs/spec.md §2, as F.embedding_bag); torch's
        # quantized ops do not (tests/op/test_quantized.py shows it): the reference instead.
        ref, mag = reference(qm.packed_weight, bits, x, None, "sum")
        assert_matches(qm(x), ref, mag, f"bits={bits} 2-D include_last_offset")
    else:
        assert_same(qm(x), m(x), f"bits={bits} 2-D")


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("mode", ["mean", "max"])
def test_from_torch_mean_max_torch_module_is_wrong(mode, bits):
    """torch's quantized module keeps mode but its forward passes mode=0: it returns the sum.
    mybag's module built from it computes the mode (the reference); torch's result is shown
    next to it, and the "torch is wrong" half skips if torch gets fixed."""
    m = torch_quantized_module(bits, mode)
    qm = QEB.from_torch(m)
    assert qm.mode == mode
    inp, offsets, _ = batch_1d(seed=5)
    ref, mag = reference(packed_bytes_of(m), bits, inp, offsets, mode)
    mine = qm(inp, offsets)
    assert_matches(mine, ref, mag, f"mybag {mode} bits={bits}")

    theirs = m(inp, offsets)
    sum_ref, sum_mag = reference(packed_bytes_of(m), bits, inp, offsets, "sum")
    side_by_side = (f"{mode} bits={bits} bag 0: reference {ref[0, :3].tolist()}, mybag "
                    f"{mine[0, :3].tolist()}, torch {theirs[0, :3].tolist()}")
    if bool(((theirs.double() - ref).abs() <= RTOL * mag).all()):
        pytest.skip(f"torch {torch.__version__} got fixed: nnq.EmbeddingBag honors mode={mode} "
                    f"({side_by_side})")
    assert_within(theirs, sum_ref, RTOL * sum_mag, f"torch returns the sum: {side_by_side}")
    assert float((theirs.double() - ref).abs().max()) > 0.1 * float(ref.abs().max()), side_by_side


def test_from_torch_rejects_float_module():
    with pytest.raises((TypeError, ValueError), match="(?i)EmbeddingBag|quantized"):
        QEB.from_torch(nn.EmbeddingBag(NUM_EMBEDDINGS, DIM))


# ---------------------------------------------------------------------------------------------
# The module itself


@pytest.mark.parametrize("bits", BITS)
def test_constructor_attributes_and_repr(bits):
    qm = QEB(NUM_EMBEDDINGS, DIM, bits=bits, mode="max", include_last_offset=True,
             padding_idx=-1, output_dtype=torch.bfloat16)
    assert qm.packed_weight.dtype == torch.uint8
    assert qm.packed_weight.shape == (NUM_EMBEDDINGS, DIM + 8 if bits == 8 else DIM // 2 + 4)
    assert qm.padding_idx == NUM_EMBEDDINGS - 1
    assert qm.output_dtype == torch.bfloat16
    r = repr(qm)
    assert f"bits={bits}" in r and "mode=max" in r.replace("'", "").replace('"', ""), r
    assert "packed_weight" in dict(qm.named_buffers())
    assert list(qm.parameters()) == []


@pytest.mark.parametrize("bits", BITS)
def test_dequantize(bits):
    w = float_table(6)
    qm = QEB.from_float(w, bits=bits)
    d = qm.dequantize()
    assert d.dtype == torch.float32 and d.shape == w.shape
    assert torch.equal(d, mybag.dequantize_rowwise(qm.packed_weight, bits))
    q, scale, bias = unpack(qm.packed_weight, bits)
    eps = torch.finfo(torch.float32).eps
    assert_within(d, q * scale + bias, eps * ((q * scale).abs() + bias.abs()), "dequantize")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_output_dtype_module(dtype):
    w = float_table(7)
    qm32 = QEB.from_float(w, bits=8, mode="sum")
    qm = QEB.from_float(w, bits=8, mode="sum", output_dtype=dtype)
    inp, offsets, p = batch_1d(psw=True)
    out = qm(inp, offsets, p)
    assert out.dtype == dtype
    assert torch.equal(out, qm32(inp, offsets, p).to(dtype)), "not the float32 result rounded once"


def test_module_refuses_psw_requiring_grad():
    qm = QEB.from_float(float_table(8), mode="sum")
    inp, offsets, p = batch_1d(psw=True)
    p.requires_grad_()
    with pytest.raises(RuntimeError, match="(?s)per_sample_weights.*grad"):
        qm(inp, offsets, p)
    with torch.no_grad():
        out = qm(inp, offsets, p)
    assert torch.equal(out, qm(inp, offsets, p.detach()))


# ---------------------------------------------------------------------------------------------
# state_dict


@pytest.mark.parametrize("bits", BITS)
def test_state_dict_round_trip(bits):
    src = QEB.from_float(float_table(9), bits=bits, mode="mean", padding_idx=2)
    buffer = io.BytesIO()
    torch.save(src.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)  # weights_only=True, torch's default: plain data only
    fresh = QEB(NUM_EMBEDDINGS, DIM, bits=bits, mode="mean", padding_idx=2)
    assert not torch.equal(fresh.packed_weight, src.packed_weight)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.packed_weight, src.packed_weight)
    inp, offsets, _ = batch_1d(padding_idx=2)
    assert_same(fresh(inp, offsets), src(inp, offsets))


def test_state_dict_of_4_bits_into_8_bits_module_raises():
    """Of the same D (the packed widths differ) and of a D whose 4-bit width equals the 8-bit
    width of the module's D (24 values in 16 bytes; 8 values in 16 bytes): either way, an error
    that names both bit widths."""
    bits_named = r"(?s)\b4.?bits?\b.*\b8.?bits?\b"
    state4 = QEB.from_float(float_table(10), bits=4).state_dict()
    target = QEB(NUM_EMBEDDINGS, DIM, bits=8)
    with pytest.raises((RuntimeError, ValueError), match=bits_named):
        target.load_state_dict(state4)
    assert target.bits == 8
    state4 = QEB.from_float(float_table(10, dim=24), bits=4).state_dict()
    target = QEB(NUM_EMBEDDINGS, 8, bits=8)
    assert target.packed_weight.shape == state4["packed_weight"].shape
    with pytest.raises((RuntimeError, ValueError), match=bits_named):
        target.load_state_dict(state4)
    assert target.bits == 8


def test_failed_load_leaves_module_unchanged():
    """A 4-bit state whose packed width fits an 8-bit module (24 values in 16 bytes; 8 values
    in 16 bytes): the load raises, and the module keeps its own table (torch's
    Module._load_from_state_dict copies buffers before it sets the extra state, so the layout
    has to be checked before that)."""
    state4 = QEB.from_float(float_table(10, dim=24), bits=4).state_dict()
    target = QEB(NUM_EMBEDDINGS, 8, bits=8)
    before = target.packed_weight.clone()
    with pytest.raises((RuntimeError, ValueError)):
        target.load_state_dict(state4)
    assert torch.equal(target.packed_weight, before), "the 4-bit table was loaded anyway"


# ---------------------------------------------------------------------------------------------
# TorchScript


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("mode", MODES)
def test_script_equals_eager(mode, bits):
    qm = QEB.from_float(float_table(11), bits=bits, mode=mode, padding_idx=4)
    scripted = torch.jit.script(qm)
    psw = mode == "sum"
    inp, offsets, p = batch_1d(padding_idx=4, psw=psw)
    assert_same(scripted(inp, offsets, p), qm(inp, offsets, p), "1-D")
    x = batch_2d(padding_idx=4)
    assert_same(scripted(x), qm(x), "2-D")
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    assert_same(loaded(inp, offsets, p), qm(inp, offsets, p), "after save/load")
    assert_same(loaded(x), qm(x), "2-D after save/load")


class Model(nn.Module):
    """A quantized bag feeding a Linear layer. The arguments are not called "input" (see
    test_export.py: a torch quirk with copies of exported programs)."""

    def __init__(self, bag: nn.Module):
        super().__init__()
        self.bag = bag
        self.linear = nn.Linear(bag.embedding_dim, 3)

    def forward(self, idx: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(self.bag(idx, offsets))


def make_model(bits, mode="mean", padding_idx=None, device="cpu"):
    torch.manual_seed(0)
    bag = QEB.from_float(float_table(12), bits=bits, mode=mode, padding_idx=padding_idx)
    return Model(bag).to(device).eval()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_script_model():
    model = make_model(4, "max", padding_idx=1)
    scripted = torch.jit.script(model)
    inp, offsets, _ = batch_1d(padding_idx=1)
    with torch.no_grad():
        assert_same(scripted(inp, offsets), model(inp, offsets))


# ---------------------------------------------------------------------------------------------
# torch.export


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("mode", MODES)
def test_export_1d(mode, bits):
    model = make_model(bits, mode, padding_idx=2)
    inp, offsets, _ = batch_1d(padding_idx=2)
    with torch.no_grad():
        ep = torch.export.export(model, (inp, offsets))
        assert_same(ep.module()(inp, offsets), model(inp, offsets), "exported")
        # Other indices of the same shapes (the program is specialized to the shapes).
        inp2 = (inp * 7 + 1) % NUM_EMBEDDINGS
        assert not torch.equal(inp2, inp)
        assert_same(ep.module()(inp2, offsets), model(inp2, offsets), "exported, new indices")


@pytest.mark.parametrize("bits", BITS)
def test_export_2d(bits):
    model = make_model(bits, "sum")
    x = batch_2d()
    with torch.no_grad():
        ep = torch.export.export(model, (x,))
        assert_same(ep.module()(x), model(x))


def test_export_dynamic_batch():
    """One program for every number of indices and bags."""
    model = make_model(8, "mean")
    inp, offsets, _ = batch_1d(num_bags=5)
    n, b = torch.export.Dim("n"), torch.export.Dim("b")
    with torch.no_grad():
        ep = torch.export.export(model, (inp, offsets), dynamic_shapes=({0: n}, {0: b}))
        for seed, num_bags in [(1, 3), (2, 9)]:
            inp2, offsets2, _ = batch_1d(seed=seed, num_bags=num_bags)
            assert_same(ep.module()(inp2, offsets2), model(inp2, offsets2), f"{num_bags} bags")


def test_export_save_load():
    model = make_model(4, "sum")
    inp, offsets, _ = batch_1d()
    with torch.no_grad():
        ep = torch.export.export(model, (inp, offsets))
        buffer = io.BytesIO()
        torch.export.save(ep, buffer)
        buffer.seek(0)
        loaded = torch.export.load(buffer)
        assert_same(loaded.module()(inp, offsets), model(inp, offsets))


# ---------------------------------------------------------------------------------------------
# torch.compile


@pytest.fixture
def _reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("_reset_dynamo")
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("bits", BITS)
def test_compile_fullgraph(bits, dynamic):
    model = make_model(bits, "mean", padding_idx=3)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=dynamic)
    # dynamic: in the first call the number of indices differs from the number of bags (else
    # dynamo's duck sizing takes them for equal and recompiles when they are not).
    sizes = [(4, 0), (7, 1), (3, 2)] if dynamic else [(5, 0), (5, 0)]
    with torch.no_grad():
        for num_bags, seed in sizes:
            inp, offsets, _ = batch_1d(seed=seed, num_bags=num_bags, padding_idx=3)
            assert inp.numel() != offsets.numel()
            assert_same(compiled(inp, offsets), model(inp, offsets), f"{num_bags} bags")
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times"


@pytest.mark.usefixtures("_reset_dynamo")
def test_compile_psw_2d():
    bag = QEB.from_float(float_table(13), bits=4, mode="sum")
    compiled = torch.compile(bag, backend="aot_eager", fullgraph=True)
    inp, offsets, p = batch_1d(psw=True)
    assert_same(compiled(inp, offsets, p), bag(inp, offsets, p), "1-D psw")
    x = batch_2d()
    assert_same(compiled(x), bag(x), "2-D")


# ---------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("mode", MODES)
def test_module_on_device_equals_cpu(mode, bits, device):
    cpu = QEB.from_float(float_table(14), bits=bits, mode=mode, padding_idx=5)
    moved = copy.deepcopy(cpu).to(device)
    assert moved.packed_weight.device.type == device
    built = QEB.from_float(float_table(14).to(device), bits=bits, mode=mode, padding_idx=5)
    assert built.packed_weight.device.type == device
    assert torch.equal(built.packed_weight.cpu(), cpu.packed_weight)
    inp, offsets, p = batch_1d(padding_idx=5, psw=mode == "sum")
    expected = cpu(inp, offsets, p)
    to = lambda t: None if t is None else t.to(device)
    for qm in [moved, built]:
        out = qm(to(inp), to(offsets), to(p))
        assert out.device.type == device
        assert_same(out.cpu(), expected, f"{mode} bits={bits} on {device}")
