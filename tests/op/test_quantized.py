"""Row-wise quantized embedding bags (issue 15, /work/quant_api.md): ``mybag.quantize_rowwise``,
``mybag.dequantize_rowwise`` and ``mybag.quantized_embedding_bag`` (``torch.ops.mybag``'s
``quantize_rowwise``, ``quantized_embedding_bag`` and ``_quantized_embedding_bag_forward``).

What is compared against what:

* Packing: ``quantize_rowwise`` against torch's own ``quantized::embedding_bag_byte_prepack`` /
  ``embedding_bag_4bit_prepack``, bit for bit (``torch.equal`` on the uint8 tables).
* Values: the written-out dequantized table, read here from the packed bytes in float64
  (``q * scale + bias``), run through ``F.embedding_bag`` in float64. The packed tables come
  from torch's prepack, so they are independent of mybag's quantizer, and a table packed by
  torch works unchanged.
* Sum mode: torch's ``quantized::embedding_bag_byte_rowwise_offsets`` /
  ``embedding_bag_4bit_rowwise_offsets`` (mode=0), bit for bit: the contract fixes FBGEMM's
  order of operations.
* Mean and max: torch 2.14.1's quantized ops ignore ``mode`` (they return the sum); a test shows
  torch's result and mybag's side by side against the dequantized reference.

Tolerance against the float64 reference (``assert_matches``): per output element,
``|got - ref| <= RTOL * M``, where M is the same reduction (sum, mean or max) over the bag of
the magnitudes of what the float32 kernel adds, ``|w| * (|scale * q| + |bias|)``. Float32
accumulation of a bag of n entries, two roundings an entry (``acc + bias`` and the fma) plus
the per-sample weight's products and the mean's division, is off by at most about
(n + 2) * eps32 * M (eps32 = 1.19e-7); RTOL = 1e-5 covers bags of up to 80 entries, and no
case here has more than 40. An empty bag, or one of padding only, has M = 0: it must be exactly
zero.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import mybag
import pytest
import torch
import torch.nn.functional as F
from conftest import make_case, reference_embedding_bag

ops = torch.ops.mybag
tq = torch.ops.quantized

BITS = [8, 4]
MODES = ["sum", "mean", "max"]
MODE_CODES = {"sum": 0, "mean": 1, "max": 2}
HALF_DTYPES = [torch.float16, torch.bfloat16]
RTOL = 1e-5
EPS32 = torch.finfo(torch.float32).eps


# ---------------------------------------------------------------------------------------------
# Helpers: torch's packing, the packed bytes read back, the reference and the comparisons


def torch_prepack(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """torch's own packing of a float32/float16 table (on the CPU)."""
    w = weight.detach().cpu()
    if bits == 8:
        return tq.embedding_bag_byte_prepack(w)
    return tq.embedding_bag_4bit_prepack(w)


def torch_quantized_bag(packed, bits, input, offsets=None, mode="sum", per_sample_weights=None,
                        include_last_offset=False) -> torch.Tensor:
    """torch's quantized embedding bag (CPU only) on a packed table."""
    op = (tq.embedding_bag_byte_rowwise_offsets if bits == 8
          else tq.embedding_bag_4bit_rowwise_offsets)
    cpu = lambda t: None if t is None else t.cpu()
    return op(packed.cpu(), input.cpu(), cpu(offsets), False, MODE_CODES[mode], False,
              cpu(per_sample_weights), None, include_last_offset)


def packed_dim(packed: torch.Tensor, bits: int) -> int:
    return packed.shape[1] - 8 if bits == 8 else (packed.shape[1] - 4) * 2


def unpack(packed: torch.Tensor, bits: int):
    """The packed table read back, in float64: q (E, D), scale (E, 1), bias (E, 1). 8 bits: D
    bytes then float32 scale and bias; 4 bits: D/2 bytes (even column in the low nibble), then
    float16 scale and bias."""
    p = packed.detach().cpu()
    rows = p.shape[0]
    if bits == 8:
        d = p.shape[1] - 8
        q = p[:, :d].double()
        qparams = p[:, d:].contiguous().view(torch.float32).double()
    else:
        half = p.shape[1] - 4
        b = p[:, :half].to(torch.int64)
        q = torch.stack([b & 0x0F, b >> 4], dim=-1).reshape(rows, 2 * half).double()
        qparams = p[:, half:].contiguous().view(torch.float16).double()
    return q, qparams[:, :1], qparams[:, 1:]


def dequantized64(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """The written-out dequantized table: q * scale + bias, in float64 (exact but for the last
    addition's rounding, far below float32's)."""
    q, scale, bias = unpack(packed, bits)
    return q * scale + bias


def reference(packed, bits, input, offsets=None, mode="mean", per_sample_weights=None,
              include_last_offset=False, padding_idx=None):
    """(output, magnitude), float64 on the CPU: F.embedding_bag over the dequantized table, and
    the same reduction over the magnitudes of the float32 kernel's terms (see the docstring at
    the top)."""
    q, scale, bias = unpack(packed, bits)
    table = q * scale + bias
    magnitudes = (q * scale).abs() + bias.abs()
    inp = input.cpu().long()
    offs = None if offsets is None else offsets.cpu().long()
    psw = None if per_sample_weights is None else per_sample_weights.detach().cpu().double()
    kw = {"mode": mode, "include_last_offset": include_last_offset, "padding_idx": padding_idx}
    ref = F.embedding_bag(inp, table, offs, per_sample_weights=psw, **kw)
    mag = F.embedding_bag(inp, magnitudes, offs,
                          per_sample_weights=None if psw is None else psw.abs(), **kw)
    return ref, mag


def names(*parts: str) -> str:
    """A regex matching a message that contains every part (regexes), in any order, ignoring
    case."""
    return "(?si)" + "".join(f"(?=.*(?:{p}))" for p in parts)


def val(value) -> str:
    """A regex for a number standing on its own in a message (so 7 does not match 17 or 0.7)."""
    return r"(?<![\w.])" + re.escape(str(value)) + r"(?![\d.])"


def _first_bad(bad: torch.Tensor):
    return tuple(int(i) for i in bad.nonzero()[0])


def assert_within(got: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor, msg: str):
    """|got - expected| <= bound elementwise (float64 on the CPU); a NaN fails."""
    assert got.shape == expected.shape, \
        f"{msg}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    err = (got.detach().cpu().double() - expected).abs()
    bad = ~(err <= bound)
    if bad.any():
        i = _first_bad(bad)
        raise AssertionError(
            f"{msg}: {int(bad.sum())} of {bad.numel()} elements off; first at {i}: "
            f"got {float(got.detach().cpu()[i])!r}, expected {float(expected[i])!r}, "
            f"|error| {float(err[i]):.3g} > bound {float(bound[i]):.3g}; "
            f"largest error {float(err.max()):.3g}")


def assert_matches(got, ref, mag, msg, dtype=torch.float32):
    """mybag's float32 output against the float64 reference (see the docstring at the top)."""
    assert got.dtype == dtype, f"{msg}: dtype {got.dtype} != {dtype}"
    assert_within(got, ref, RTOL * mag, msg)


def ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One unit in the last place of ``dtype`` at the magnitudes of ``x`` (float64): for a normal
    number 2**(e - mantissa bits), for zero and subnormals the subnormal spacing."""
    info = torch.finfo(dtype)
    mantissa_bits = {torch.float16: 10, torch.bfloat16: 7, torch.float32: 23}[dtype]
    _, exp = torch.frexp(x.abs())  # x = m * 2**exp, m in [0.5, 1)
    u = torch.ldexp(torch.ones_like(x), exp - 1 - mantissa_bits)
    tiny = info.smallest_normal * info.eps
    return torch.where(x == 0, torch.full_like(x, tiny), u.clamp(min=tiny))


def qbag(case_or_input, packed, bits, offsets=None, **kw) -> torch.Tensor:
    return mybag.quantized_embedding_bag(case_or_input, packed, bits, offsets, **kw)


def random_table(rows, dim, seed=0, dtype=torch.float32, device="cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, dim, generator=g, dtype=torch.float64).to(dtype).to(device)


def fixed_dim(dim: int, bits: int) -> int:
    """An even D for 4 bits (4-bit rows hold two values a byte)."""
    return dim + 1 if bits == 4 and dim % 2 else dim


# ---------------------------------------------------------------------------------------------
# 1. Packing: quantize_rowwise is torch's prepack, bit for bit


def table_of_kind(kind: str, rows: int, dim: int, dtype: torch.dtype, bits: int,
                  seed: int = 0) -> torch.Tensor:
    """A (rows, dim) table of ``dtype`` whose rows are of the given kind. The magnitudes stay
    where torch's packing is finite: float16 input and 4-bit float16 scale/bias stay below
    65504."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=g, dtype=torch.float64)
    half_range = dtype == torch.float16 or bits == 4
    if kind == "normal":
        out = x
    elif kind == "uniform":
        out = torch.rand(rows, dim, generator=g, dtype=torch.float64) * 10 - 3
    elif kind == "constant":
        out = x[:, :1].expand(rows, dim).clone()
    elif kind == "negative":
        out = -x.abs() - 0.5
    elif kind == "huge":
        out = x.clamp(-5, 5) * (1e4 if half_range else 1e30)
    elif kind == "small":
        out = x * (1e-6 if half_range else 1e-30)
    elif kind == "ties":
        # Rows spanning [0, steps] exactly (scale 1, bias 0): the other values half-way between
        # two steps, where round-half-even decides (0.5 -> 0, 1.5 -> 2, 2.5 -> 2, ...).
        steps = 255 if bits == 8 else 15
        out = (torch.arange(rows * dim, dtype=torch.float64).reshape(rows, dim) % steps) + 0.5
        out[:, 0] = 0.0
        if dim > 1:
            out[:, 1] = float(steps)
    elif kind == "mixed":
        # Every row different: constant, zero, negative only, positive only, a tiny range far
        # from zero, one outlier, a huge range, a tiny range.
        out = x.clone()
        for r in range(rows):
            k = r % 8
            if k == 0:
                out[r] = 1.25
            elif k == 1:
                out[r] = 0.0
            elif k == 2:
                out[r] = -x[r].abs() - 2
            elif k == 3:
                out[r] = x[r].abs() + 7
            elif k == 4:
                out[r] = 100 + x[r] * 1e-3
            elif k == 5:
                out[r] = x[r] * 0.01
                out[r, r % dim] = 40.0
            elif k == 6:
                out[r] = x[r].clamp(-5, 5) * (1e4 if half_range else 1e20)
            else:
                out[r] = x[r] * 1e-5
    else:
        raise ValueError(kind)
    return out.to(dtype)


KINDS = ["normal", "uniform", "constant", "negative", "huge", "small", "ties", "mixed"]
# (rows, D) for 8 bits (any D) and 4 bits (even D).
SHAPES = {
    8: [(1, 1), (7, 2), (33, 3), (20, 8), (9, 13), (16, 64), (5, 127), (11, 130)],
    4: [(1, 2), (7, 4), (33, 6), (20, 8), (9, 10), (16, 64), (5, 66), (11, 130)],
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("bits", BITS)
def test_quantize_equals_torch_prepack(bits, dtype, kind, device):
    for k, (rows, dim) in enumerate(SHAPES[bits]):
        w = table_of_kind(kind, rows, dim, dtype, bits, seed=k)
        expected = torch_prepack(w, bits)
        got = mybag.quantize_rowwise(w.to(device), bits)
        assert got.dtype == torch.uint8 and got.device.type == device
        assert got.shape == expected.shape, (rows, dim, got.shape, expected.shape)
        got = got.cpu()
        if not torch.equal(got, expected):
            diff = (got != expected).nonzero()
            r = int(diff[0, 0])
            raise AssertionError(
                f"{kind} {dtype} bits={bits} shape=({rows}, {dim}): {len(diff)} bytes differ, "
                f"first in row {r}: weight {w[r].tolist()}\n got {got[r].tolist()}\n"
                f"expected {expected[r].tolist()}")


@pytest.mark.parametrize("bits", BITS)
def test_quantize_op_equals_function(bits, device):
    """torch.ops.mybag.quantize_rowwise (default bits=8) and mybag.quantize_rowwise agree."""
    w = random_table(12, 10, device=device)
    expected = torch_prepack(w, bits)
    assert torch.equal(ops.quantize_rowwise(w, bits).cpu(), expected)
    assert torch.equal(mybag.quantize_rowwise(w, bits=bits).cpu(), expected)
    if bits == 8:
        assert torch.equal(ops.quantize_rowwise(w).cpu(), expected)
        assert torch.equal(mybag.quantize_rowwise(w).cpu(), expected)


@pytest.mark.parametrize("bits", BITS)
def test_quantize_bfloat16_is_quantizing_its_float32(bits, device):
    """torch's prepack takes no bfloat16; the contract converts the weight to float32 first."""
    w = table_of_kind("mixed", 24, 18, torch.float32, bits).to(torch.bfloat16).to(device)
    got = mybag.quantize_rowwise(w, bits).cpu()
    assert torch.equal(got, torch_prepack(w.float(), bits))
    assert torch.equal(got, mybag.quantize_rowwise(w.float(), bits).cpu())


@pytest.mark.parametrize("bits", BITS)
def test_quantize_non_contiguous(bits, device):
    """A column slice and a transposed table pack like their contiguous copies."""
    base = random_table(40, 24, device=device)
    for w in [base[:, ::2], base.t()[:, :16], base[3:17]]:
        assert torch.equal(mybag.quantize_rowwise(w, bits).cpu(),
                           torch_prepack(w.contiguous(), bits))


@pytest.mark.parametrize("bits", BITS)
def test_quantize_empty_table(bits, device):
    """A table of no rows packs to no rows of the packed width, as torch's prepack does."""
    w = torch.empty(0, 6, device=device)
    got = mybag.quantize_rowwise(w, bits)
    assert got.dtype == torch.uint8
    assert got.shape == torch_prepack(w, bits).shape


def test_quantize_odd_dim_for_4_bits_names_embedding_dim(device):
    w = random_table(4, 5, device=device)
    with pytest.raises(ValueError, match=names("embedding_dim", val(5))):
        mybag.quantize_rowwise(w, 4)
    with pytest.raises((ValueError, RuntimeError), match=names("embedding_dim", val(5))):
        ops.quantize_rowwise(w, 4)


@pytest.mark.parametrize("bits", [3, 0, 16, -8])
def test_quantize_bad_bits(bits, device):
    w = random_table(4, 6, device=device)
    with pytest.raises(ValueError, match=names("bits", val(bits))):
        mybag.quantize_rowwise(w, bits)
    with pytest.raises((ValueError, RuntimeError), match=names("bits", val(bits))):
        ops.quantize_rowwise(w, bits)


@pytest.mark.parametrize("shape", [(6,), (2, 3, 4), ()], ids=["1d", "3d", "0d"])
def test_quantize_not_2d(shape, device):
    w = torch.randn(shape, device=device)
    with pytest.raises(ValueError, match=names("weight", val(len(shape)))):
        mybag.quantize_rowwise(w, 8)


@pytest.mark.parametrize("dtype, name", [(torch.int64, "long|int64"), (torch.uint8, "byte|uint8"),
                                         (torch.float64, "double|float64")],
                         ids=["int64", "uint8", "float64"])
def test_quantize_bad_dtype(dtype, name, device):
    """float32, float16 and bfloat16 only (the contract's list; torch's prepack refuses
    float64 too)."""
    w = torch.ones(4, 6, dtype=dtype, device=device)
    with pytest.raises(RuntimeError, match=names("weight", name)):
        mybag.quantize_rowwise(w, 8)


# Dequantization


@pytest.mark.parametrize("kind", ["normal", "uniform", "negative", "mixed", "huge"])
@pytest.mark.parametrize("bits", BITS)
def test_dequantize_is_the_written_out_dequantization(bits, kind, device):
    """dequantize_rowwise returns float32 q * scale + bias, within one float32 rounding of each
    of the product and the sum: |got - exact| <= eps32 * (|q * scale| + |bias|)."""
    w = table_of_kind(kind, 40, 34, torch.float32, bits)
    packed = torch_prepack(w, bits)
    got = mybag.dequantize_rowwise(packed.to(device), bits)
    assert got.dtype == torch.float32 and got.shape == w.shape
    assert got.device.type == device
    q, scale, bias = unpack(packed, bits)
    bound = EPS32 * ((q * scale).abs() + bias.abs())
    assert_within(got, q * scale + bias, bound, f"dequantize bits={bits} {kind}")


@pytest.mark.parametrize("kind", ["normal", "uniform", "negative", "mixed"])
@pytest.mark.parametrize("bits", BITS)
def test_dequantize_of_quantize_is_within_half_a_step(bits, kind, device):
    """Round trip error per element: at most half a quantization step (scale / 2), and for 4 bits
    also what the float16 bias and the clamp to [0, 15] cut off: the representable range of a row
    is [bias, bias + 15 * scale], with bias = half(row min) possibly above the row's min.

    Slack, all far below scale / 2: 8 bits divides by (max - min) + 1e-8 rather than max - min,
    which moves values by at most 1e-8 (absolute); the float32 arithmetic of the quantizer
    (x - min, the product, the scale's division) by a few 1e-5 steps."""
    w = table_of_kind(kind, 40, 34, torch.float32, bits).to(device)
    packed = mybag.quantize_rowwise(w, bits)
    got = mybag.dequantize_rowwise(packed, bits).cpu().double()
    w64 = w.cpu().double()
    _, scale, bias = unpack(packed, bits)
    bound = scale * (0.5 + 1e-4)
    if bits == 8:
        bound = bound + 1e-8
    else:
        row_min = w64.min(1, keepdim=True).values
        row_max = w64.max(1, keepdim=True).values
        bound = bound + (bias - row_min).clamp(min=0) + (row_max - (bias + 15 * scale)).clamp(min=0)
    bound = bound + EPS32 * (w64.abs() + bias.abs())  # the float32 result's own rounding
    assert_within(got, w64, bound.expand_as(w64), f"round trip bits={bits} {kind}")
    # The bound is tight: some element is off by more than a third of a step.
    steps = ((got - w64).abs() / scale)[(scale > 0).expand_as(w64)]
    assert float(steps.max()) > 1 / 3


# ---------------------------------------------------------------------------------------------
# 2. Values against the dequantized reference


@dataclasses.dataclass(frozen=True)
class Cfg:
    """A batch's shape and options (the tensors come from conftest.make_case)."""

    name: str
    form: str = "1d"
    include_last_offset: bool = False
    padding_idx: int | None = None
    psw: bool = False
    empty_bags: bool = False
    index: str = "i64"
    dim: int = 16
    num_embeddings: int = 30
    num_bags: int = 7
    max_bag: int = 6

    def __str__(self):
        return self.name

    def make(self, mode, bits, device, seed=0):
        """(packed table on device, the case on device)."""
        dim = fixed_dim(self.dim, bits)
        case = make_case(mode=mode, form=self.form, include_last_offset=self.include_last_offset,
                         padding_idx=self.padding_idx, psw=self.psw, dtype=torch.float32,
                         index_dtypes=self.index, empty_bags=self.empty_bags,
                         num_embeddings=self.num_embeddings, dim=dim, num_bags=self.num_bags,
                         max_bag=self.max_bag, seed=seed, device=device)
        packed = torch_prepack(case.weight, bits).to(device)
        return packed, case


CONFIGS = [
    Cfg("1d"),
    Cfg("1d_ilo", include_last_offset=True, dim=13),
    Cfg("2d", form="2d", dim=34),
    Cfg("1d_psw", psw=True, dim=6),
    Cfg("2d_psw_pad", form="2d", psw=True, padding_idx=5),
    Cfg("1d_pad", padding_idx=3, dim=10),
    Cfg("2d_negpad", form="2d", padding_idx=-2),
    Cfg("1d_empty", empty_bags=True, dim=2),
    Cfg("1d_empty_pad_ilo", empty_bags=True, padding_idx=0, include_last_offset=True),
    Cfg("2d_padonly_row", form="2d", empty_bags=True, padding_idx=7, dim=8),
    Cfg("1d_i32", index="i32", dim=66),
    Cfg("1d_i32_i64_pad", index="i32_i64", padding_idx=-1),
    Cfg("1d_i64_i32_psw", index="i64_i32", psw=True),
    Cfg("2d_i32", form="2d", index="i32", dim=130),
    Cfg("1d_long_bags", num_embeddings=9, num_bags=4, max_bag=40, dim=24),
]


def _value_params():
    out = []
    for cfg in CONFIGS:
        for mode in ["sum"] if cfg.psw else MODES:
            for bits in BITS:
                out.append(pytest.param(cfg, mode, bits, id=f"{cfg}-{mode}-{bits}bit"))
    return out


def call(packed, bits, case, **extra):
    return mybag.quantized_embedding_bag(
        case.input, packed, bits, case.offsets, mode=case.mode,
        per_sample_weights=case.per_sample_weights,
        include_last_offset=case.include_last_offset, padding_idx=case.padding_idx, **extra)


def case_reference(packed, bits, case):
    return reference(packed, bits, case.input, case.offsets, case.mode, case.per_sample_weights,
                     case.include_last_offset, case.padding_idx)


@pytest.mark.parametrize("cfg, mode, bits", _value_params())
def test_values_match_dequantized_reference(cfg, mode, bits, device):
    packed, case = cfg.make(mode, bits, device)
    out = call(packed, bits, case)
    assert out.device.type == device
    assert out.shape == (case.num_bags, packed_dim(packed, bits))
    ref, mag = case_reference(packed, bits, case)
    assert_matches(out, ref, mag, f"{cfg} {mode} bits={bits}: {case.describe()}")


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=["f16", "bf16"])
@pytest.mark.parametrize("bits", BITS)
def test_half_per_sample_weights(bits, dtype, device):
    """per_sample_weights of float16/bfloat16 are taken as their (exact) float32 values."""
    packed, case = Cfg("1d_psw", psw=True).make("sum", bits, device)
    psw = case.per_sample_weights.to(dtype)
    out = qbag(case.input, packed, bits, case.offsets, mode="sum", per_sample_weights=psw)
    expected = qbag(case.input, packed, bits, case.offsets, mode="sum",
                    per_sample_weights=psw.float())
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)


@pytest.mark.parametrize("cfg, mode, bits", _value_params()[::5])
def test_op_equals_function(cfg, mode, bits, device):
    """The public op (positional, ScalarType? output_dtype=None) is the Python function."""
    packed, case = cfg.make(mode, bits, device)
    expected = call(packed, bits, case)
    got = ops.quantized_embedding_bag(case.input, packed, bits, case.offsets, case.mode,
                                      case.per_sample_weights, case.include_last_offset,
                                      case.padding_idx, None)
    assert torch.equal(got, expected)


def _half_params():
    cfgs = [CONFIGS[0], CONFIGS[2], CONFIGS[4], CONFIGS[8], CONFIGS[13]]
    return [pytest.param(cfg, mode, bits, dtype, id=f"{cfg}-{mode}-{bits}bit-{str(dtype)[6:]}")
            for cfg in cfgs for mode in (["sum"] if cfg.psw else MODES) for bits in BITS
            for dtype in HALF_DTYPES]


@pytest.mark.parametrize("cfg, mode, bits, dtype", _half_params())
def test_half_output_is_float32_rounded_once(cfg, mode, bits, dtype, device):
    """output_dtype float16/bfloat16: the float32 result rounded once (so, bit for bit, the
    float32 output converted), and within one ulp of the reference rounded to that dtype (plus
    the float32 accumulation's bound)."""
    packed, case = cfg.make(mode, bits, device)
    out = call(packed, bits, case, output_dtype=dtype)
    assert out.dtype == dtype
    out32 = call(packed, bits, case)
    assert torch.equal(out, out32.to(dtype)), "not the float32 result rounded once"
    ref, mag = case_reference(packed, bits, case)
    ref_rounded = ref.to(dtype).double()
    got = out.cpu().double()
    bound = ulp(torch.maximum(got.abs(), ref_rounded.abs()), dtype) + RTOL * mag
    assert_within(out, ref_rounded, bound, f"{cfg} {mode} bits={bits} {dtype}")


def test_output_dtype_float32_explicit(device):
    packed, case = CONFIGS[0].make("mean", 8, device)
    assert torch.equal(call(packed, 8, case, output_dtype=torch.float32), call(packed, 8, case))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("mode", MODES)
def test_max_ties_and_all_negative(mode, bits, device):
    """Rows quantized to equal values (ties in max) and all-negative rows: max must not start
    from 0, and an entry repeated in a bag counts twice in sum and mean."""
    w = torch.tensor([[-3.0, -2.0, -1.0, -4.0], [-3.0, -2.0, -1.0, -4.0], [-0.5, -7.0, -2.0, -1.0],
                      [1.0, 1.0, 1.0, 1.0]])
    packed = torch_prepack(w, bits).to(device)
    inp = torch.tensor([0, 1, 2, 2, 0, 1, 3, 3, 3], device=device)
    offsets = torch.tensor([0, 3, 6], device=device)
    out = qbag(inp, packed, bits, offsets, mode=mode)
    ref, mag = reference(packed, bits, inp, offsets, mode)
    assert_matches(out, ref, mag, f"{mode} bits={bits}")
    if mode == "max":
        assert (out[:2] < 0).all()


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("mode", MODES)
def test_nan_in_the_table(mode, bits, device):
    """A row whose bias is NaN (written into the packed bytes): every bag holding it is NaN in
    every column, in max mode too, wherever the row stands in the bag (docs/spec.md §3, §9: NaN
    wins); the other bags are unaffected. Against conftest's reference (the spec's NaN rule;
    F.embedding_bag keeps a NaN only when it comes first)."""
    packed = torch_prepack(random_table(8, 6, seed=5), bits)
    qparams = packed[:, -8:].clone() if bits == 8 else packed[:, -4:].clone()
    view = qparams.view(torch.float32 if bits == 8 else torch.float16)
    view[2, 1] = float("nan")  # row 2's bias
    packed[:, -qparams.shape[1]:] = qparams
    inp = torch.tensor([0, 1, 2, 4, 2, 5, 6, 7, 1])
    offsets = torch.tensor([0, 3, 4, 6])  # bags [0 1 2] [4] [2 5] [6 7 1]
    out = qbag(inp.to(device), packed.to(device), bits, offsets.to(device), mode=mode).cpu()
    expected = reference_embedding_bag(inp, dequantized64(packed, bits), offsets, mode)
    assert torch.isnan(out[[0, 2]]).all(), out
    assert not torch.isnan(out[[1, 3]]).any(), out
    _, mag = reference(packed, bits, inp, offsets, mode)
    rows = [1, 3]
    assert_matches(out[rows], expected[rows], mag[rows], f"NaN table {mode} bits={bits}")


@pytest.mark.parametrize("bits", BITS)
def test_no_bags_and_no_entries(bits, device):
    """1-D input with no indices and offsets of B zeros: B bags of zeros; no bags at all:
    (0, D); 2-D input of zero-length bags: zeros."""
    packed = torch_prepack(random_table(5, 6), bits).to(device)
    empty = torch.empty(0, dtype=torch.int64, device=device)
    for mode in MODES:
        out = qbag(empty, packed, bits, torch.zeros(3, dtype=torch.int64, device=device), mode=mode)
        assert out.shape == (3, 6) and out.dtype == torch.float32
        assert torch.equal(out.cpu(), torch.zeros(3, 6)), mode
        out = qbag(empty, packed, bits, empty, mode=mode)
        assert out.shape == (0, 6), mode
        out = qbag(torch.empty(4, 0, dtype=torch.int64, device=device), packed, bits, mode=mode)
        assert torch.equal(out.cpu(), torch.zeros(4, 6)), mode


# ---------------------------------------------------------------------------------------------
# 3. Sum mode against torch's quantized ops, bit for bit

SUM_CONFIGS = [Cfg("1d"), Cfg("1d_ilo", include_last_offset=True, dim=13),
               Cfg("2d", form="2d", dim=34), Cfg("1d_psw", psw=True, dim=6),
               Cfg("2d_psw", form="2d", psw=True, dim=64),
               Cfg("1d_empty_psw", empty_bags=True, psw=True, dim=10),
               Cfg("1d_ilo_empty", empty_bags=True, include_last_offset=True, dim=130),
               Cfg("1d_i32", index="i32", dim=8),
               Cfg("1d_i32_psw", index="i32", psw=True, dim=18),
               Cfg("1d_long_bags_psw", num_embeddings=9, num_bags=4, max_bag=40, dim=24,
                   psw=True)]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("cfg", SUM_CONFIGS, ids=str)
def test_sum_equals_torch_quantized_op(cfg, bits, device):
    """The contract: FBGEMM's order (s = scale*w, b = bias*w, acc = fma(s, q, acc + b)), so the
    sum equals torch's quantized op bit for bit. torch's op runs on the CPU only; mybag's kernel
    on every device must give the same bits. The table is torch's own packing."""
    packed, case = cfg.make("sum", bits, device)
    expected = torch_quantized_bag(packed, bits, case.input, case.offsets, "sum",
                                   case.per_sample_weights, case.include_last_offset)
    out = call(packed, bits, case)
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=0,
                               msg=lambda m: f"{cfg} bits={bits}: {case.describe()}\n{m}")


@pytest.mark.parametrize("bits", BITS)
def test_sum_with_mybag_packing_equals_torch_op(bits, device):
    """mybag's own packing fed to torch's op and to mybag's: the same bits."""
    w = random_table(50, 40, seed=3)
    packed = mybag.quantize_rowwise(w.to(device), bits)
    g = torch.Generator().manual_seed(4)
    inp = torch.randint(0, 50, (60,), generator=g)
    offsets = torch.tensor([0, 4, 4, 20, 33, 59])
    psw = torch.randn(60, generator=g)
    for p in [None, psw]:
        expected = torch_quantized_bag(packed, bits, inp, offsets, "sum", p)
        out = qbag(inp.to(device), packed, bits, offsets.to(device), mode="sum",
                   per_sample_weights=None if p is None else p.to(device))
        torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# 4. torch is wrong: its quantized ops ignore mode


def _torch_wrong_case(bits):
    """Bags of 2 to 6 entries from a table of mixed signs: mean and max differ from the sum."""
    g = torch.Generator().manual_seed(11)
    w = torch.randn(25, 12, generator=g)
    packed = torch_prepack(w, bits)
    sizes = torch.randint(2, 7, (8,), generator=g)
    inp = torch.randint(0, 25, (int(sizes.sum()),), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)[:-1]])
    return packed, inp, offsets


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("mode", ["mean", "max"])
def test_torch_quantized_op_ignores_mode_mybag_does_not(mode, bits, device):
    packed, inp, offsets = _torch_wrong_case(bits)
    ref, mag = reference(packed, bits, inp, offsets, mode)

    # mybag's half: always asserted.
    mine = qbag(inp.to(device), packed.to(device), bits, offsets.to(device), mode=mode)
    assert_matches(mine, ref, mag, f"mybag {mode} bits={bits}")

    # torch's half, side by side.
    theirs = torch_quantized_bag(packed, bits, inp, offsets, mode)
    theirs_sum = torch_quantized_bag(packed, bits, inp, offsets, "sum")
    torch_err = float((theirs.double() - ref).abs().max())
    mine_err = float((mine.cpu().double() - ref).abs().max())
    side_by_side = (f"mode={mode} bits={bits}: bag 0 reference {ref[0, :4].tolist()}, "
                    f"mybag {mine[0, :4].tolist()}, torch {theirs[0, :4].tolist()}; "
                    f"largest error: mybag {mine_err:.3g}, torch {torch_err:.3g}")
    if bool(((theirs.double() - ref).abs() <= RTOL * mag).all()):
        pytest.skip(f"torch {torch.__version__} got fixed: its quantized op now honors "
                    f"mode={mode} ({side_by_side})")
    assert torch.equal(theirs, theirs_sum), f"torch's op no longer returns the sum: {side_by_side}"
    assert torch_err > 0.1 * float(ref.abs().max()), side_by_side
    assert mine_err < 1e-4 * torch_err, side_by_side


@pytest.mark.parametrize("bits", BITS)
def test_2d_input_ignores_include_last_offset_torch_does_not(bits, device):
    """2-D input: include_last_offset is ignored (docs/spec.md §2, as F.embedding_bag): B rows,
    B bags. torch 2.14.1's quantized ops take it into account: the 8-bit op returns B - 1 bags,
    the 4-bit op raises. mybag's half always asserts; torch's half skips once torch is fixed."""
    packed = torch_prepack(random_table(10, 8, seed=2), bits)
    x = torch.randint(0, 10, (4, 5), generator=torch.Generator().manual_seed(3))
    ref, mag = reference(packed, bits, x, None, "sum")
    mine = qbag(x.to(device), packed.to(device), bits, mode="sum", include_last_offset=True)
    assert_matches(mine, ref, mag, f"2-D include_last_offset bits={bits}")
    try:
        theirs = torch_quantized_bag(packed, bits, x, None, "sum", include_last_offset=True)
    except RuntimeError as e:
        assert bits == 4, f"torch's {bits}-bit op raised: {e}"
        return
    if theirs.shape == ref.shape and bool(((theirs.double() - ref).abs() <= RTOL * mag).all()):
        pytest.skip(f"torch {torch.__version__} got fixed: 2-D input with include_last_offset")
    assert theirs.shape == (3, 8), f"torch's 8-bit op returned {tuple(theirs.shape)}"


# ---------------------------------------------------------------------------------------------
# 5. Errors


def base_call(bits: int, shape: str, index_dtype=torch.int64, device="cpu") -> dict:
    """A valid call: a 10 x 4 table, 3 bags of 3 + 2 + 3 (1-D) or 2 bags of 4 (2-D)."""
    packed = torch_prepack(random_table(10, 4, seed=1), bits)
    if shape == "1d":
        inp = torch.tensor([1, 2, 4, 5, 7, 8, 9, 3], dtype=index_dtype)
        offsets = torch.tensor([0, 3, 5], dtype=index_dtype)
    else:
        inp = torch.tensor([[1, 2, 4, 5], [7, 8, 9, 3]], dtype=index_dtype)
        offsets = None
    kw = {"input": inp, "packed_weight": packed, "bits": bits, "offsets": offsets,
          "mode": "mean", "per_sample_weights": None, "include_last_offset": False,
          "padding_idx": None, "output_dtype": None}
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


ARG_ORDER = ["input", "packed_weight", "bits", "offsets", "mode", "per_sample_weights",
             "include_last_offset", "padding_idx", "output_dtype"]
ENTRIES = {
    "function": lambda kw: mybag.quantized_embedding_bag(**kw),
    "op": lambda kw: ops.quantized_embedding_bag(*[kw[k] for k in ARG_ORDER]),
}


def _set(**changes):
    def mutate(kw):
        for k, v in changes.items():
            kw[k] = v(kw) if callable(v) else v
    return mutate


def _entry(value, mode="mean", **more):
    """input's 6th flat entry (in the second bag) set to value."""
    def mutate(kw):
        inp = kw["input"].clone()
        inp.view(-1)[5] = value
        kw["input"] = inp
        kw["mode"] = mode
        _set(**more)(kw)
    return mutate


def _psw(kw):
    return torch.rand(kw["input"].shape, device=kw["input"].device)


def _offs(values):
    return lambda kw: torch.tensor(values, dtype=kw["input"].dtype, device=kw["input"].device)


@dataclasses.dataclass
class Bad:
    id: str
    mutate: object
    exc: type
    parts: tuple
    shapes: tuple = ("1d", "2d")


BAD = []
for _mode in MODES:
    BAD += [Bad(f"index_too_big_{_mode}", _entry(17, _mode), IndexError, ("input", val(17))),
            Bad(f"index_eq_num_{_mode}", _entry(10, _mode), IndexError, ("input", val(10))),
            Bad(f"index_negative_{_mode}", _entry(-3, _mode), IndexError, ("input", val(-3)))]
BAD += [
    Bad("index_too_big_with_psw", _entry(12, "sum", per_sample_weights=_psw), IndexError,
        ("input", val(12))),
    Bad("index_too_big_with_padding_idx", _entry(11, "max", padding_idx=2), IndexError,
        ("input", val(11))),
    # packed_weight
    Bad("packed_float", _set(packed_weight=lambda kw: kw["packed_weight"].float()), RuntimeError,
        ("packed_weight", "float")),
    Bad("packed_int8", _set(packed_weight=lambda kw: kw["packed_weight"].to(torch.int8)),
        RuntimeError, ("packed_weight", "char|int8")),
    Bad("packed_1d", _set(packed_weight=lambda kw: kw["packed_weight"][0].clone()), ValueError,
        ("packed_weight", val(1))),
    Bad("packed_3d", _set(packed_weight=lambda kw: kw["packed_weight"][None].clone()),
        ValueError, ("packed_weight", val(3))),
    Bad("packed_too_few_columns",
        _set(packed_weight=lambda kw: kw["packed_weight"][:, :3].contiguous()), ValueError,
        ("packed_weight", val(3))),
    # No room for a value besides the scale and bias: 8 columns for 8 bits, 4 for 4 bits.
    Bad("packed_only_qparams",
        _set(packed_weight=lambda kw: kw["packed_weight"][:, -(8 if kw["bits"] == 8 else 4):]
             .contiguous()),
        ValueError, ("packed_weight",)),
    # bits
    Bad("bits_3", _set(bits=3), ValueError, ("bits", val(3))),
    Bad("bits_16", _set(bits=16), ValueError, ("bits", val(16))),
    # offsets
    Bad("offsets_first_not_zero", _set(offsets=_offs([2, 3, 5])), RuntimeError,
        ("offsets", val(2)), shapes=("1d",)),
    Bad("offsets_decreasing", _set(offsets=_offs([0, 6, 4])), RuntimeError, ("offsets", val(4)),
        shapes=("1d",)),
    Bad("offsets_past_end", _set(offsets=_offs([0, 3, 9])), RuntimeError, ("offsets", val(9)),
        shapes=("1d",)),
    Bad("offsets_missing_for_1d", _set(offsets=None), ValueError, ("offsets", "None"),
        shapes=("1d",)),
    Bad("offsets_given_for_2d", _set(offsets=_offs([0, 1])), ValueError,
        ("offsets", r"2-?D|dimension"), shapes=("2d",)),
    # input
    Bad("input_float", _set(input=lambda kw: kw["input"].float()), RuntimeError,
        ("input", "float")),
    Bad("input_3d", _set(input=lambda kw: kw["input"].reshape(2, 2, 2)), ValueError,
        ("input", val(3))),
    # mode
    Bad("mode_unknown", _set(mode="avg"), ValueError, ("mode", "avg")),
    # per_sample_weights
    Bad("psw_mean", _set(per_sample_weights=_psw), NotImplementedError,
        ("per_sample_weights", "mean")),
    Bad("psw_max", _set(mode="max", per_sample_weights=_psw), NotImplementedError,
        ("per_sample_weights", "max")),
    Bad("psw_shape", _set(mode="sum", per_sample_weights=lambda kw: _psw(kw).reshape(-1)[:7]),
        ValueError, ("per_sample_weights", val(7))),
    Bad("psw_float64", _set(mode="sum", per_sample_weights=lambda kw: _psw(kw).double()),
        RuntimeError, ("per_sample_weights", "double")),
    # padding_idx
    Bad("padding_idx_eq_num", _set(padding_idx=10), RuntimeError, ("padding_idx", val(10))),
    Bad("padding_idx_too_negative", _set(padding_idx=-11), RuntimeError,
        ("padding_idx", val(-11))),
    # output_dtype
    # output_dtype: a dtype outside float32/float16/bfloat16 (a dtype error: RuntimeError, as
    # for weight's and per_sample_weights' dtypes).
    Bad("output_dtype_float64", _set(output_dtype=torch.float64), RuntimeError,
        ("output_dtype", "float64|double")),
    Bad("output_dtype_int", _set(output_dtype=torch.int32), RuntimeError,
        ("output_dtype", "int32|int")),
]


def _bad_params():
    out = []
    for bad in BAD:
        for shape in bad.shapes:
            for bits in BITS:
                for entry in ENTRIES:
                    out.append(pytest.param(bad, shape, bits, entry,
                                            id=f"{bad.id}-{shape}-{bits}bit-{entry}"))
    return out


@pytest.mark.parametrize("bad, shape, bits, entry", _bad_params())
def test_bad_input_raises(bad, shape, bits, entry, device):
    kw = base_call(bits, shape, device=device)
    bad.mutate(kw)
    before = {k: v.clone() for k, v in kw.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(bad.exc, match=names(*bad.parts)) as info:
        ENTRIES[entry](kw)
    # Exactly the type the contract names (NotImplementedError is a RuntimeError, for one).
    assert info.type is bad.exc, f"raised {info.type.__name__}, expected {bad.exc.__name__}"
    for k, old in before.items():
        assert torch.equal(kw[k].cpu(), old.cpu()), f"{k} modified by a failed call"


@pytest.mark.parametrize("name", ["input", "offsets", "per_sample_weights"])
def test_mixed_devices_raise_on_cpu_machines(name):
    """One tensor on the meta device, the others on the CPU (testable without a GPU): an error
    naming the tensor and both devices."""
    kw = base_call(8, "1d")
    kw["mode"] = "sum"
    if name == "per_sample_weights":
        kw[name] = _psw(kw)
    kw[name] = kw[name].to("meta")
    with pytest.raises(RuntimeError, match=names(name, "meta", "cpu", "device")):
        mybag.quantized_embedding_bag(**kw)


@pytest.mark.parametrize("bits", BITS)
def test_base_call_is_valid(bits, device):
    """The table above means something only if the unmutated calls work."""
    for shape in ["1d", "2d"]:
        kw = base_call(bits, shape, device=device)
        for entry in ENTRIES.values():
            out = entry(kw)
            ref, mag = reference(kw["packed_weight"], bits, kw["input"], kw["offsets"], "mean")
            assert_matches(out, ref, mag, f"{shape} bits={bits}")


@pytest.mark.parametrize("bits", BITS)
def test_narrowest_table(bits, device):
    """One value a row (8 bits: D = 1, 9 columns) or two (4 bits: D = 2, 5 columns) is valid."""
    dim = 1 if bits == 8 else 2
    packed = torch_prepack(random_table(6, dim, seed=9), bits).to(device)
    assert packed.shape[1] == (9 if bits == 8 else 5)
    inp = torch.tensor([0, 5, 3, 3, 1], device=device)
    offsets = torch.tensor([0, 2], device=device)
    for mode in MODES:
        ref, mag = reference(packed, bits, inp, offsets, mode)
        assert_matches(qbag(inp, packed, bits, offsets, mode=mode), ref, mag, mode)


def test_wrong_bits_for_the_table_is_caught_by_width():
    """A 4-bit table read as 8 bits (or the reverse) is no error when its width fits both
    layouts, but the D it implies differs: the output width tells."""
    packed4 = torch_prepack(random_table(10, 24), 4)  # 16 columns: 4 bits D=24, 8 bits D=8
    inp = torch.tensor([1, 2])
    offsets = torch.tensor([0])
    assert qbag(inp, packed4, 4, offsets).shape == (1, 24)
    assert qbag(inp, packed4, 8, offsets).shape == (1, 8)


# ---------------------------------------------------------------------------------------------
# 6. No autograd


@pytest.mark.parametrize("bits", BITS)
def test_psw_requiring_grad_is_refused(bits, device):
    packed, case = Cfg("1d_psw", psw=True).make("sum", bits, device)
    psw = case.per_sample_weights.clone().requires_grad_()
    with pytest.raises(RuntimeError, match=names("per_sample_weights", "grad")):
        qbag(case.input, packed, bits, case.offsets, mode="sum", per_sample_weights=psw)
    with pytest.raises(RuntimeError, match=names("per_sample_weights", "grad")):
        ops.quantized_embedding_bag(case.input, packed, bits, case.offsets, "sum", psw)


@pytest.mark.parametrize("bits", BITS)
def test_psw_requiring_grad_works_under_no_grad(bits, device):
    packed, case = Cfg("1d_psw", psw=True).make("sum", bits, device)
    plain = call(packed, bits, case)
    psw = case.per_sample_weights.clone().requires_grad_()
    for ctx in [torch.no_grad, torch.inference_mode]:
        with ctx():
            out = qbag(case.input, packed, bits, case.offsets, mode="sum", per_sample_weights=psw)
        assert not out.requires_grad
        assert torch.equal(out, plain), ctx.__name__


def test_output_never_requires_grad(device):
    packed, case = CONFIGS[0].make("mean", 8, device)
    assert not call(packed, 8, case).requires_grad


# ---------------------------------------------------------------------------------------------
# 7. opcheck


@dataclasses.dataclass(frozen=True)
class OpSample:
    form: str = "1d"
    mode: str = "sum"
    bits: int = 8
    index_dtype: torch.dtype = torch.int64
    padding_idx: int | None = None
    psw: bool = False
    include_last_offset: bool = False
    output_dtype: torch.dtype = torch.float32
    empty_bag: bool = False

    @property
    def id(self):
        parts = [self.form, self.mode, f"{self.bits}bit", str(self.index_dtype)[6:],
                 str(self.output_dtype)[6:]]
        if self.padding_idx is not None:
            parts.append(f"pad={self.padding_idx}")
        parts += [n for n in ["psw", "include_last_offset", "empty_bag"] if getattr(self, n)]
        return "-".join(parts)

    def args(self, device):
        """_quantized_embedding_bag_forward's arguments."""
        g = torch.Generator().manual_seed(5)
        packed = torch_prepack(torch.randn(12, 6, generator=g), self.bits)
        if self.form == "2d":
            inp = torch.randint(0, 12, (3, 4), generator=g)
            offsets = None
        else:
            inp = torch.randint(0, 12, (9,), generator=g)
            offsets = [0, 2, 2, 6] if self.empty_bag else [0, 2, 5, 6]
            if self.include_last_offset:
                offsets = offsets + [9]
            offsets = torch.tensor(offsets, dtype=self.index_dtype)
        if self.padding_idx is not None:
            inp.view(-1)[[0, 3, 4]] = self.padding_idx % 12
        inp = inp.to(self.index_dtype)
        psw = torch.rand(inp.shape, generator=g) if self.psw else None
        to = lambda t: None if t is None else t.to(device)
        return (to(packed), to(inp), to(offsets), to(psw), self.bits, MODE_CODES[self.mode],
                self.padding_idx, self.include_last_offset, self.output_dtype)


OP_SAMPLES = [
    OpSample(),
    OpSample(mode="mean", bits=4, index_dtype=torch.int32, padding_idx=2),
    OpSample(mode="max", include_last_offset=True, empty_bag=True),
    OpSample(form="2d", psw=True, bits=4, padding_idx=-1),
    OpSample(form="2d", mode="mean", output_dtype=torch.float16),
    OpSample(mode="max", bits=4, output_dtype=torch.bfloat16, index_dtype=torch.int32),
]


@pytest.mark.parametrize("s", OP_SAMPLES, ids=[s.id for s in OP_SAMPLES])
def test_opcheck_forward(s, device):
    torch.library.opcheck(ops._quantized_embedding_bag_forward.default, s.args(device))


def test_forward_op_is_the_public_op():
    """opcheck is not vacuous: the internal op computes the public op's output."""
    for s in OP_SAMPLES:
        packed, inp, offsets, psw, bits, _mode, pad, ilo, out_dtype = s.args("cpu")
        got = ops._quantized_embedding_bag_forward(*s.args("cpu"))
        expected = mybag.quantized_embedding_bag(inp, packed, bits, offsets, mode=s.mode,
                                                 per_sample_weights=psw, include_last_offset=ilo,
                                                 padding_idx=pad, output_dtype=out_dtype)
        assert torch.equal(got, expected), s.id


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["f32", "f16", "bf16"])
def test_opcheck_quantize(dtype, bits, device):
    w = random_table(9, 10, dtype=dtype, device=device)
    torch.library.opcheck(ops.quantize_rowwise.default, (w, bits))


@pytest.mark.parametrize("s", OP_SAMPLES[:3], ids=[s.id for s in OP_SAMPLES[:3]])
def test_opcheck_public(s, device):
    packed, inp, offsets, psw, bits, _mode, pad, ilo, out_dtype = s.args(device)
    torch.library.opcheck(ops.quantized_embedding_bag.default,
                          (inp, packed, bits, offsets, s.mode, psw, ilo, pad, out_dtype))


# ---------------------------------------------------------------------------------------------
# 8. Determinism


def _big_case(bits, device, mode, num_bags=3000, dim=64, psw=False):
    g = torch.Generator().manual_seed(21)
    packed = torch_prepack(torch.randn(500, dim, generator=g), bits).to(device)
    sizes = torch.randint(0, 16, (num_bags,), generator=g)
    inp = torch.randint(0, 500, (int(sizes.sum()),), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)[:-1]])
    p = torch.randn(inp.shape, generator=g).to(device) if psw else None
    return packed, inp.to(device), offsets.to(device), p


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("mode", MODES)
def test_same_call_same_bits(mode, bits, device):
    packed, inp, offsets, psw = _big_case(bits, device, mode, psw=mode == "sum")
    a = qbag(inp, packed, bits, offsets, mode=mode, per_sample_weights=psw)
    b = qbag(inp, packed, bits, offsets, mode=mode, per_sample_weights=psw)
    assert torch.equal(a, b)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("mode", MODES)
def test_thread_count_does_not_change_bits(mode, bits):
    packed, inp, offsets, psw = _big_case(bits, "cpu", mode, psw=mode == "sum")
    old = torch.get_num_threads()
    try:
        results = []
        for n in [1, 2]:
            torch.set_num_threads(n)
            results.append(qbag(inp, packed, bits, offsets, mode=mode, per_sample_weights=psw))
            results.append(mybag.quantize_rowwise(mybag.dequantize_rowwise(packed, bits), bits))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(results[0], results[2]), "output differs between 1 and 2 threads"
    assert torch.equal(results[1], results[3]), "packing differs between 1 and 2 threads"


# The CPU's SIMD kernels against its portable loops (MYBAG_CPU_SIMD, csrc/mybag/cpu/isa.h: "0"
# the portable loops, unset the best the CPU has), bit for bit, at the widths where the kernels
# change shape (partial vectors, one and several column tiles). (A CPU-only property, kept here
# with the quantized tests; tests/op/test_cpu_simd.py does the same for the float kernels.)

SIMD_DIMS = [2, 6, 8, 14, 16, 18, 30, 32, 34, 62, 64, 66, 128, 130, 256, 258, 514]


def simd_cases():
    """name -> output, for every width, bits and mode (psw in sum, padding in mean and max)."""
    g = torch.Generator().manual_seed(77)
    results = {}
    for dim in SIMD_DIMS:
        for bits in BITS:
            packed = torch_prepack(torch.randn(40, dim, generator=g), bits)
            lengths = torch.randint(0, 30, (10,), generator=g)
            lengths[2] = 0
            inp = torch.randint(0, 40, (int(lengths.sum()),), generator=g)
            inp[::4] = 3
            offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
            psw = torch.randn(inp.shape, generator=g)
            for mode in MODES:
                extra = ({"per_sample_weights": psw} if mode == "sum" else {"padding_idx": 3})
                for out_dtype in [torch.float32, torch.bfloat16]:
                    results[f"D{dim}-{bits}bit-{mode}-{str(out_dtype)[6:]}"] = qbag(
                        inp, packed, bits, offsets, mode=mode, output_dtype=out_dtype, **extra)
    return results


def simd_results(setting, path):
    env = dict(os.environ)
    env["MYBAG_CPU_SIMD"] = setting
    # The child imports this file, and through it tests/conftest.py.
    here = os.path.dirname(os.path.abspath(__file__))
    code = ("import sys, torch; sys.path[:0] = sys.argv[1:3]; import test_quantized; "
            "torch.save(test_quantized.simd_cases(), sys.argv[3])")
    subprocess.run([sys.executable, "-c", code, here, os.path.dirname(here), str(path)],
                   env=env, check=True)
    return torch.load(path)


def test_simd_kernels_equal_portable_loops(tmp_path):
    """The portable loops in a subprocess; the kernels this process picked (the best the CPU
    has, unless MYBAG_CPU_SIMD says otherwise) here."""
    portable = simd_results("0", tmp_path / "portable.pt")
    best = simd_cases()
    assert portable.keys() == best.keys()
    differ = [k for k in best if not torch.equal(best[k], portable[k])]
    assert not differ, f"SIMD and portable kernels differ: {differ[:10]}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bits", BITS)
def test_index_error_names_first_bad_entry(bits, mode):
    """Bad indices met by different threads: the error names the first one."""
    packed = torch_prepack(random_table(100, 34), bits)
    inp = torch.randint(0, 100, (4000,), generator=torch.Generator().manual_seed(8))
    inp[2500] = -1
    inp[3900] = 100
    with pytest.raises(IndexError, match=names("input", "2500", val(-1))):
        qbag(inp, packed, bits, torch.arange(0, 4000, 10), mode=mode)


# ---------------------------------------------------------------------------------------------
# 9. Large-ish


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("mode", MODES)
def test_large(mode, bits, device):
    """1000 bags of 0 to 40 entries into a 2000 x 256 table, against the reference."""
    g = torch.Generator().manual_seed(31)
    w = torch.randn(2000, 256, generator=g)
    packed = mybag.quantize_rowwise(w.to(device), bits)
    assert torch.equal(packed.cpu(), torch_prepack(w, bits))
    sizes = torch.randint(0, 41, (1000,), generator=g)
    inp = torch.randint(0, 2000, (int(sizes.sum()),), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)[:-1]])
    psw = torch.randn(inp.shape, generator=g) if mode == "sum" else None
    out = qbag(inp.to(device), packed, bits, offsets.to(device), mode=mode,
               per_sample_weights=None if psw is None else psw.to(device), padding_idx=7)
    ref, mag = reference(packed, bits, inp, offsets, mode, psw, padding_idx=7)
    assert_matches(out, ref, mag, f"large {mode} bits={bits}")
