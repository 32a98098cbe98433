"""Bad input (docs/spec.md §6): the right exception type, a message naming the argument and the bad
value, nothing modified (weight included, when max_norm is set), and a library that keeps working.

Also: the internal operators called directly with garbage raise instead of crashing, and double
backward fails with a clear error (docs/spec.md §5).
"""

import re
from collections.abc import Callable
from dataclasses import dataclass

import mybag
import pytest
import torch
import torch.nn.functional as F
from conftest import requires_cuda

NUM_EMBEDDINGS = 10
DIM = 3
INDEX_DTYPES = [torch.int32, torch.int64]

ops = torch.ops.mybag


# ---------------------------------------------------------------------------------------------
# Helpers


def names(*parts: str) -> str:
    """A regex matching a message that contains every part (regexes), in any order, ignoring
    case."""
    return "(?si)" + "".join(f"(?=.*{p})" for p in parts)


def val(value) -> str:
    """A regex for a number standing on its own in a message (so 7 does not match 17 or 0.7)."""
    return r"(?<![\w.])" + re.escape(str(value)) + r"(?![\d.])"


def fval(value: float) -> str:
    """A regex for a float however it is printed: -1, -1.0, -1.000000."""
    return r"(?<![\w.])" + re.escape(str(int(value))) + r"(?:\.0*)?(?!\d)"


def base_kwargs(shape: str, index_dtype: torch.dtype, device="cpu", max_norm=None) -> dict:
    """A valid call: 2 bags of 3 + 2 + 3 (1-D) or 2 bags of 4 (2-D) indices into a 10 x 3 table
    whose rows all have a 2-norm well above 0.5."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(NUM_EMBEDDINGS, DIM, generator=gen) * 3 + 2
    if shape == "1d":
        inp = torch.tensor([1, 2, 4, 5, 7, 8, 9, 3], dtype=index_dtype)
        offsets = torch.tensor([0, 3, 5], dtype=index_dtype)
    else:
        inp = torch.tensor([[1, 2, 4, 5], [7, 8, 9, 3]], dtype=index_dtype)
        offsets = None
    kw = {
        "input": inp,
        "weight": weight,
        "offsets": offsets,
        "max_norm": max_norm,
        "norm_type": 2.0,
        "scale_grad_by_freq": False,
        "mode": "mean",
        "sparse": False,
        "per_sample_weights": None,
        "include_last_offset": False,
        "padding_idx": None,
    }
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


ARG_ORDER = [
    "input",
    "weight",
    "offsets",
    "max_norm",
    "norm_type",
    "scale_grad_by_freq",
    "mode",
    "sparse",
    "per_sample_weights",
    "include_last_offset",
    "padding_idx",
]


def call_functional(kw):
    return mybag.embedding_bag(**kw)


def call_op(kw):
    return torch.ops.mybag.embedding_bag(*[kw[k] for k in ARG_ORDER])


ENTRIES = {"functional": call_functional, "op": call_op}


def snapshot(kw: dict) -> dict:
    return {k: v.clone() for k, v in kw.items() if isinstance(v, torch.Tensor)}


def assert_untouched(kw: dict, before: dict):
    for k, old in before.items():
        new = kw[k]
        assert torch.equal(new.cpu(), old.cpu()), f"{k} was modified by a call that failed"


def set_entry(t: torch.Tensor, value: int) -> torch.Tensor:
    """t with its 6th flat entry (in the second bag, for both shapes) replaced by value."""
    t = t.clone()
    t.view(-1)[5] = value
    return t


# ---------------------------------------------------------------------------------------------
# The table of bad inputs to the public operator


@dataclass
class Bad:
    id: str
    mutate: Callable[[dict, str], None]  # edits the call's keyword arguments; gets the shape
    exc: type
    parts: Callable[[str], tuple]  # the regex parts the message must hold, per shape
    shapes: tuple = ("1d", "2d")
    sets_max_norm: bool = False  # the case is about max_norm itself


def _update(**changes):
    def mutate(kw, shape):
        for k, v in changes.items():
            kw[k] = v(kw, shape) if callable(v) else v

    return mutate


def _parts(*p):
    return lambda shape: p


def _bad_index(value, mode, **extra):
    def mutate(kw, shape):
        kw["input"] = set_entry(kw["input"], value)
        kw["mode"] = mode
        for k, v in extra.items():
            kw[k] = v(kw, shape) if callable(v) else v

    return mutate


def _psw(kw, shape):
    return torch.rand(kw["input"].shape, dtype=kw["weight"].dtype, device=kw["weight"].device)


def _offsets(values):
    return lambda kw, shape: torch.tensor(values, dtype=kw["input"].dtype,
                                          device=kw["input"].device)


BAD: list[Bad] = []
for _mode in ["sum", "mean", "max"]:
    BAD += [
        Bad(f"index_too_big_{_mode}", _bad_index(17, _mode), IndexError, _parts("input", val(17))),
        Bad(f"index_eq_num_{_mode}", _bad_index(10, _mode), IndexError, _parts("input", val(10))),
        Bad(f"index_negative_{_mode}", _bad_index(-3, _mode), IndexError, _parts("input", val(-3))),
    ]
BAD += [
    Bad("index_too_big_with_padding_idx", _bad_index(17, "mean", padding_idx=2), IndexError,
        _parts("input", val(17))),
    Bad("index_negative_as_padding_idx", _bad_index(-1, "sum", padding_idx=-1), IndexError,
        _parts("input", val(-1))),
    Bad("index_too_big_with_psw", _bad_index(17, "sum", per_sample_weights=_psw), IndexError,
        _parts("input", val(17))),
    Bad("index_huge", _bad_index(2**31 - 1, "sum"), IndexError, _parts("input", val(2**31 - 1))),
    # offsets' values
    Bad("offsets_first_not_zero", _update(offsets=_offsets([2, 3, 5])), RuntimeError,
        _parts("offsets", val(2)), shapes=("1d",)),
    Bad("offsets_decreasing", _update(offsets=_offsets([0, 6, 4])), RuntimeError,
        _parts("offsets", val(4)), shapes=("1d",)),
    Bad("offsets_past_end", _update(offsets=_offsets([0, 3, 9])), RuntimeError,
        _parts("offsets", val(9)), shapes=("1d",)),
    Bad("offsets_past_end_include_last",
        _update(offsets=_offsets([0, 3, 5, 11]), include_last_offset=True), RuntimeError,
        _parts("offsets", val(11)), shapes=("1d",)),
    Bad("include_last_offset_empty_offsets",
        _update(offsets=_offsets([]), include_last_offset=True), ValueError,
        _parts("include_last_offset", "offsets"), shapes=("1d",)),
    # shapes and presence of offsets
    Bad("offsets_2d", _update(offsets=_offsets([[0, 3, 5]])), ValueError,
        _parts("offsets", val(2)), shapes=("1d",)),
    Bad("offsets_0d", _update(offsets=_offsets(0)), ValueError,
        _parts("offsets", val(0)), shapes=("1d",)),
    Bad("offsets_missing_for_1d_input", _update(offsets=None), ValueError,
        _parts("offsets", "None"), shapes=("1d",)),
    Bad("offsets_given_for_2d_input", _update(offsets=_offsets([0, 1])), ValueError,
        _parts("offsets", r"2-?D|dimension"), shapes=("2d",)),
    Bad("input_0d", _update(input=lambda kw, s: kw["input"].reshape(-1)[0]), ValueError,
        _parts("input", val(0))),
    Bad("input_3d", _update(input=lambda kw, s: kw["input"].reshape(2, 2, 2)), ValueError,
        _parts("input", val(3))),
    # dtypes
    Bad("input_float", _update(input=lambda kw, s: kw["input"].float()), RuntimeError,
        _parts("input", "float")),
    Bad("input_bool", _update(input=lambda kw, s: kw["input"] > 3), RuntimeError,
        _parts("input", "bool")),
    Bad("offsets_float", _update(offsets=lambda kw, s: kw["offsets"].double()), RuntimeError,
        _parts("offsets", "double"), shapes=("1d",)),
    Bad("weight_1d", _update(weight=lambda kw, s: kw["weight"][:, 0].clone()), ValueError,
        _parts("weight", val(1))),
    Bad("weight_3d", _update(weight=lambda kw, s: kw["weight"].unsqueeze(0).clone()), ValueError,
        _parts("weight", val(3))),
    Bad("weight_int", _update(weight=lambda kw, s: kw["weight"].long()), RuntimeError,
        _parts("weight", "long")),
    Bad("weight_complex", _update(weight=lambda kw, s: kw["weight"].to(torch.complex64)),
        RuntimeError, _parts("weight", "complex")),
    # mode
    Bad("mode_unknown", _update(mode="avg"), ValueError, _parts("mode", "avg")),
    Bad("mode_upper_case", _update(mode="SUM"), ValueError, _parts("mode", "SUM")),
    Bad("mode_max_scale_grad_by_freq", _update(mode="max", scale_grad_by_freq=True), ValueError,
        _parts("scale_grad_by_freq", "max")),
    Bad("mode_max_sparse", _update(mode="max", sparse=True), ValueError,
        _parts("sparse", "max")),
    # per_sample_weights
    Bad("psw_mode_mean", _update(mode="mean", per_sample_weights=_psw), NotImplementedError,
        _parts("per_sample_weights", "mean")),
    Bad("psw_mode_max", _update(mode="max", per_sample_weights=_psw), NotImplementedError,
        _parts("per_sample_weights", "max")),
    Bad("psw_shape", _update(mode="sum",
                             per_sample_weights=lambda kw, s: _psw(kw, s).reshape(-1)[:7]),
        ValueError, _parts("per_sample_weights", val(7)), shapes=("1d",)),
    Bad("psw_shape",
        _update(mode="sum", per_sample_weights=lambda kw, s: _psw(kw, s).reshape(4, 2)),
        ValueError, _parts("per_sample_weights", re.escape("4, 2")), shapes=("2d",)),
    Bad("psw_flat_for_2d_input",
        _update(mode="sum", per_sample_weights=lambda kw, s: _psw(kw, s).reshape(-1)),
        ValueError, _parts("per_sample_weights", val(8)), shapes=("2d",)),
    Bad("psw_dtype", _update(mode="sum", per_sample_weights=lambda kw, s: _psw(kw, s).double()),
        RuntimeError, _parts("per_sample_weights", "double")),
    # padding_idx
    Bad("padding_idx_eq_num", _update(padding_idx=10), RuntimeError,
        _parts("padding_idx", val(10))),
    Bad("padding_idx_big", _update(padding_idx=123), RuntimeError,
        _parts("padding_idx", val(123))),
    Bad("padding_idx_too_negative", _update(padding_idx=-11), RuntimeError,
        _parts("padding_idx", val(-11))),
    # max_norm itself
    Bad("max_norm_negative", _update(max_norm=-1.0), ValueError,
        _parts("max_norm", fval(-1.0)), sets_max_norm=True),
    Bad("max_norm_nan", _update(max_norm=float("nan")), ValueError,
        _parts("max_norm", "nan"), sets_max_norm=True),
]


def _params(shapes=("1d", "2d"), index_dtypes=INDEX_DTYPES, max_norms=(None, 0.5),
            entries=tuple(ENTRIES)):
    out = []
    for bad in BAD:
        for shape in bad.shapes:
            if shape not in shapes:
                continue
            for dt in index_dtypes:
                for mn in (None,) if bad.sets_max_norm else max_norms:
                    for entry in entries:
                        dt_name = str(dt).replace("torch.", "")
                        out.append(pytest.param(
                            bad, shape, dt, mn, entry,
                            id=f"{bad.id}-{shape}-{dt_name}-max_norm={mn}-{entry}"))
    return out


def check_bad(bad: Bad, shape, index_dtype, max_norm, entry, device="cpu"):
    kw = base_kwargs(shape, index_dtype, device, max_norm)
    bad.mutate(kw, shape)
    before = snapshot(kw)
    with pytest.raises(bad.exc, match=names(*bad.parts(shape))) as info:
        ENTRIES[entry](kw)
    # Exactly the type the contract names (NotImplementedError is a RuntimeError, for one).
    assert info.type is bad.exc, f"raised {info.type.__name__}, expected {bad.exc.__name__}"
    assert_untouched(kw, before)


@pytest.mark.parametrize("bad, shape, index_dtype, max_norm, entry", _params())
def test_bad_input_raises_and_changes_nothing(bad, shape, index_dtype, max_norm, entry):
    check_bad(bad, shape, index_dtype, max_norm, entry)


def test_max_norm_renormalizes_the_base_case():
    """The weight-untouched checks above mean something only if a valid call with the same
    max_norm does modify weight."""
    for shape in ["1d", "2d"]:
        kw = base_kwargs(shape, torch.int64, max_norm=0.5)
        before = kw["weight"].clone()
        out = mybag.embedding_bag(**kw)
        assert not torch.equal(kw["weight"], before)
        ref_weight = before.clone()
        ref = F.embedding_bag(**{**kw, "weight": ref_weight})
        torch.testing.assert_close(kw["weight"], ref_weight)
        torch.testing.assert_close(out, ref)


def test_every_error_then_valid_calls_still_right():
    """After every error of the table, forward and backward still give torch's answer."""
    for bad in BAD:
        for shape in bad.shapes:
            kw = base_kwargs(shape, torch.int64, max_norm=None if bad.sets_max_norm else 0.5)
            bad.mutate(kw, shape)
            with pytest.raises(bad.exc):
                mybag.embedding_bag(**kw)
    for shape in ["1d", "2d"]:
        for mode in ["sum", "mean", "max"]:
            kw = base_kwargs(shape, torch.int64)
            kw["mode"] = mode
            w = kw["weight"].clone().requires_grad_()
            w_ref = kw["weight"].clone().requires_grad_()
            out = mybag.embedding_bag(**{**kw, "weight": w})
            ref = F.embedding_bag(**{**kw, "weight": w_ref})
            torch.testing.assert_close(out, ref)
            g = torch.randn_like(ref)
            out.backward(g)
            ref.backward(g)
            torch.testing.assert_close(w.grad, w_ref.grad)


def test_error_in_the_middle_of_autograd_leaves_autograd_usable():
    w = torch.randn(NUM_EMBEDDINGS, DIM, requires_grad=True)
    inp = torch.tensor([1, 2, 3, 4])
    off = torch.tensor([0, 2])
    ok = mybag.embedding_bag(inp, w, off, mode="sum")
    with pytest.raises(IndexError):
        mybag.embedding_bag(torch.tensor([1, 99]), w, torch.tensor([0]), mode="sum")
    ok.sum().backward()
    expected = torch.zeros_like(w)
    expected[[1, 2, 3, 4]] = 1
    torch.testing.assert_close(w.grad, expected)


def test_mixed_index_dtypes_are_valid():
    """int32 input with int64 offsets (and the reverse) is not an error: it is promoted."""
    kw = base_kwargs("1d", torch.int32)
    for inp_dt, off_dt in [(torch.int32, torch.int64), (torch.int64, torch.int32)]:
        args = {**kw, "input": kw["input"].to(inp_dt), "offsets": kw["offsets"].to(off_dt)}
        ref = F.embedding_bag(**{**args, "input": args["input"].long(),
                                 "offsets": args["offsets"].long()})
        torch.testing.assert_close(mybag.embedding_bag(**args), ref)


def test_many_errors_do_not_leak_or_crash():
    """A burst of failing calls of every kind, then a valid one (catches state left behind, e.g.
    a thread pool or a buffer in a bad state)."""
    kw = base_kwargs("1d", torch.int64)
    for i in range(200):
        bad = BAD[i % len(BAD)]
        args = base_kwargs("1d" if "1d" in bad.shapes else "2d", torch.int64,
                           max_norm=None if bad.sets_max_norm else 0.5)
        bad.mutate(args, "1d" if "1d" in bad.shapes else "2d")
        with pytest.raises(bad.exc):
            mybag.embedding_bag(**args)
    torch.testing.assert_close(mybag.embedding_bag(**kw), F.embedding_bag(**kw))


def _to_device(name, device):
    def mutate(kw, shape):
        if name == "per_sample_weights":
            kw["mode"] = "sum"
            kw[name] = _psw(kw, shape)
        kw[name] = kw[name].to(device)

    return mutate


@pytest.mark.parametrize("max_norm", [None, 0.5])
@pytest.mark.parametrize("shape", ["1d", "2d"])
@pytest.mark.parametrize("name", ["input", "offsets", "weight", "per_sample_weights"])
def test_mixed_devices_raise_on_cpu_machines(name, shape, max_norm):
    """Tensors on different devices, testable without a GPU: one of them on the meta device."""
    if name == "offsets" and shape == "2d":
        shape = "1d"
    kw = base_kwargs(shape, torch.int64, max_norm=max_norm)
    _to_device(name, "meta")(kw, shape)
    before = {k: v for k, v in snapshot(kw).items() if not v.is_meta}
    with pytest.raises(RuntimeError, match=names(name, "meta", "cpu", "device")):
        mybag.embedding_bag(**kw)
    assert_untouched(kw, before)


# ---------------------------------------------------------------------------------------------
# The internal operators called directly with garbage: they raise, never crash or read out of
# bounds. They have no Python-level checks in front of them.


def _internal_base(index_dtype=torch.int64, device="cpu"):
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(NUM_EMBEDDINGS, DIM, generator=gen).to(device)
    inp = torch.tensor([1, 2, 4, 5, 7, 8, 9, 3], dtype=index_dtype, device=device)
    offsets = torch.tensor([0, 3, 5], dtype=index_dtype, device=device)
    grad = torch.randn(3, DIM, generator=gen).to(device)
    psw = torch.rand(8, generator=gen).to(device)
    return weight, inp, offsets, grad, psw


def _fwd(weight, inp, offsets, psw=None, mode=0, padding_idx=None, include_last_offset=False):
    return ops._embedding_bag_forward(weight, inp, offsets, psw, mode, padding_idx,
                                      include_last_offset, False, False)


def _max_indices(weight, inp, offsets):
    return _fwd(weight, inp, offsets, mode=2)[1]


def _dense(grad, inp, offsets, psw=None, max_indices=None, num_weights=NUM_EMBEDDINGS, mode=0,
           padding_idx=None, include_last_offset=False, scale_grad_by_freq=False):
    if max_indices is None:
        max_indices = torch.empty(0, dtype=torch.long, device=grad.device)
    return ops._embedding_bag_dense_backward(grad, inp, offsets, psw, max_indices, num_weights,
                                             mode, padding_idx, include_last_offset,
                                             scale_grad_by_freq)


def _per_entry(grad, inp, offsets, psw=None, num_weights=NUM_EMBEDDINGS, mode=0,
               padding_idx=None, include_last_offset=False, scale_grad_by_freq=False):
    return ops._embedding_bag_per_entry_grad(grad, inp, offsets, psw, num_weights, mode,
                                             padding_idx, include_last_offset, scale_grad_by_freq)


def _psw_back(grad, weight, inp, offsets, mode=0, padding_idx=None, include_last_offset=False):
    return ops._embedding_bag_per_sample_weights_backward(grad, weight, inp, offsets, mode,
                                                          padding_idx, include_last_offset)


def _renorm(weight, inp, offsets, include_last_offset=False, max_norm=0.5, norm_type=2.0):
    return ops._embedding_bag_renorm_(weight, inp, offsets, include_last_offset, max_norm,
                                      norm_type)


def _bad(t, value):
    return set_entry(t, value)


# Each: (id, f(weight, input, offsets, grad, psw) -> calls an op, accepted exception, regex parts)
ANY = (RuntimeError, ValueError, IndexError)
GARBAGE = [
    # _embedding_bag_forward
    ("forward-mode_3", lambda w, i, o, g, p: _fwd(w, i, o, mode=3), ANY, ("mode", val(3))),
    ("forward-mode_negative", lambda w, i, o, g, p: _fwd(w, i, o, mode=-1), ANY,
     ("mode", val(-1))),
    ("forward-input_float", lambda w, i, o, g, p: _fwd(w, i.float(), o), ANY, ("input",)),
    ("forward-offsets_float", lambda w, i, o, g, p: _fwd(w, i, o.float()), ANY, ("offsets",)),
    ("forward-index_dtypes_differ", lambda w, i, o, g, p: _fwd(w, i.int(), o.long()), ANY,
     ("offsets",)),
    ("forward-index_too_big", lambda w, i, o, g, p: _fwd(w, _bad(i, 10), o), IndexError,
     ("input", val(10))),
    ("forward-index_negative", lambda w, i, o, g, p: _fwd(w, _bad(i, -5), o), IndexError,
     ("input", val(-5))),
    ("forward-index_too_big_max", lambda w, i, o, g, p: _fwd(w, _bad(i, 1000), o, mode=2),
     IndexError, ("input", val(1000))),
    ("forward-index_too_big_2d", lambda w, i, o, g, p: _fwd(w, _bad(i, 10).view(2, 4), None),
     IndexError, ("input", val(10))),
    ("forward-offsets_first", lambda w, i, o, g, p: _fwd(w, i, o + 1), ANY, ("offsets",)),
    ("forward-offsets_decreasing", lambda w, i, o, g, p: _fwd(w, i, o.new_tensor([0, 5, 3])),
     ANY, ("offsets", val(3))),
    ("forward-offsets_past_end", lambda w, i, o, g, p: _fwd(w, i, o.new_tensor([0, 3, 20])), ANY,
     ("offsets", val(20))),
    ("forward-offsets_huge", lambda w, i, o, g, p: _fwd(w, i, o.new_tensor([0, 1, 2**30])),
     ANY, ("offsets",)),
    ("forward-offsets_2d", lambda w, i, o, g, p: _fwd(w, i, o.view(1, 3)), ANY, ("offsets",)),
    ("forward-offsets_missing", lambda w, i, o, g, p: _fwd(w, i, None), ANY, ("offsets",)),
    ("forward-offsets_with_2d", lambda w, i, o, g, p: _fwd(w, i.view(2, 4), o[:2]), ANY,
     ("offsets",)),
    ("forward-include_last_empty",
     lambda w, i, o, g, p: _fwd(w, i, o[:0], include_last_offset=True),
     ANY, ("include_last_offset",)),
    ("forward-input_3d", lambda w, i, o, g, p: _fwd(w, i.view(2, 2, 2), None), ANY, ("input",)),
    ("forward-input_0d", lambda w, i, o, g, p: _fwd(w, i[0], o), ANY, ("input",)),
    ("forward-weight_1d", lambda w, i, o, g, p: _fwd(w[:, 0], i, o), ANY, ("weight",)),
    ("forward-weight_int", lambda w, i, o, g, p: _fwd(w.long(), i, o), ANY, ("weight",)),
    ("forward-padding_idx_big", lambda w, i, o, g, p: _fwd(w, i, o, padding_idx=10), ANY,
     ("padding_idx", val(10))),
    ("forward-padding_idx_negative", lambda w, i, o, g, p: _fwd(w, i, o, padding_idx=-11), ANY,
     ("padding_idx", val(-11))),
    ("forward-psw_shape", lambda w, i, o, g, p: _fwd(w, i, o, psw=p[:7]), ANY,
     ("per_sample_weights",)),
    ("forward-psw_dtype", lambda w, i, o, g, p: _fwd(w, i, o, psw=p.double()), ANY,
     ("per_sample_weights",)),
    ("forward-psw_mean", lambda w, i, o, g, p: _fwd(w, i, o, psw=p, mode=1), ANY,
     ("per_sample_weights",)),
    # _embedding_bag_renorm_
    ("renorm-index_too_big", lambda w, i, o, g, p: _renorm(w, _bad(i, 10), o), IndexError,
     ("input", val(10))),
    ("renorm-index_negative", lambda w, i, o, g, p: _renorm(w, _bad(i, -1), o), IndexError,
     ("input", val(-1))),
    ("renorm-index_too_big_2d", lambda w, i, o, g, p: _renorm(w, _bad(i, 12).view(2, 4), None),
     IndexError, ("input", val(12))),
    ("renorm-offsets_bad", lambda w, i, o, g, p: _renorm(w, i, o + 1), ANY, ("offsets",)),
    ("renorm-offsets_past_end", lambda w, i, o, g, p: _renorm(w, i, o * 4), ANY, ("offsets",)),
    ("renorm-input_float", lambda w, i, o, g, p: _renorm(w, i.float(), o), ANY, ("input",)),
    ("renorm-weight_int", lambda w, i, o, g, p: _renorm(w.long(), i, o), ANY, ("weight",)),
    ("renorm-weight_1d", lambda w, i, o, g, p: _renorm(w[:, 0], i, o), ANY, ("weight",)),
    ("renorm-offsets_missing", lambda w, i, o, g, p: _renorm(w, i, None), ANY, ("offsets",)),
    # _embedding_bag_dense_backward
    ("dense-grad_rows", lambda w, i, o, g, p: _dense(g[:2], i, o), ANY, ("grad",)),
    ("dense-grad_rows_more", lambda w, i, o, g, p: _dense(torch.cat([g, g]), i, o), ANY,
     ("grad",)),
    # grad stands in for weight in the shared checks, so a grad that is not 2-D or not floating
    # point is reported as "weight": only the raise is required of these internal cases.
    ("dense-grad_1d", lambda w, i, o, g, p: _dense(g[0], i, o), ANY, ()),
    ("dense-grad_3d", lambda w, i, o, g, p: _dense(g.unsqueeze(0), i, o), ANY, ()),
    ("dense-grad_int", lambda w, i, o, g, p: _dense(g.long(), i, o), ANY, ()),
    ("dense-index_too_big", lambda w, i, o, g, p: _dense(g, _bad(i, 10), o), IndexError,
     ("input", val(10))),
    ("dense-index_negative", lambda w, i, o, g, p: _dense(g, _bad(i, -2), o, mode=1), IndexError,
     ("input", val(-2))),
    ("dense-num_weights_small", lambda w, i, o, g, p: _dense(g, i, o, num_weights=5), IndexError,
     ("input",)),
    ("dense-num_weights_negative", lambda w, i, o, g, p: _dense(g, i, o, num_weights=-3), ANY,
     ()),
    ("dense-mode_bad", lambda w, i, o, g, p: _dense(g, i, o, mode=7), ANY, ("mode", val(7))),
    ("dense-offsets_bad", lambda w, i, o, g, p: _dense(g, i, o * 4), ANY, ("offsets",)),
    ("dense-offsets_decreasing", lambda w, i, o, g, p: _dense(g, i, o.new_tensor([0, 5, 3])),
     ANY, ("offsets",)),
    ("dense-psw_shape", lambda w, i, o, g, p: _dense(g, i, o, psw=p[:3]), ANY,
     ("per_sample_weights",)),
    ("dense-psw_dtype", lambda w, i, o, g, p: _dense(g, i, o, psw=p.double()), ANY,
     ("per_sample_weights",)),
    ("dense-padding_idx_big", lambda w, i, o, g, p: _dense(g, i, o, padding_idx=10), ANY,
     ("padding_idx",)),
    ("dense-max_indices_too_big",
     lambda w, i, o, g, p: _dense(g, i, o, max_indices=_max_indices(w, i, o).fill_(10), mode=2),
     IndexError, ("max_indices", val(10))),
    ("dense-max_indices_huge",
     lambda w, i, o, g, p: _dense(g, i, o, max_indices=_bad(_max_indices(w, i, o), 2**40),
                                  mode=2),
     IndexError, ("max_indices",)),
    ("dense-max_indices_negative",
     lambda w, i, o, g, p: _dense(g, i, o, max_indices=_bad(_max_indices(w, i, o), -7), mode=2),
     IndexError, ("max_indices", val(-7))),
    ("dense-max_indices_shape",
     lambda w, i, o, g, p: _dense(g, i, o, max_indices=_max_indices(w, i, o)[:2], mode=2), ANY,
     ("max_indices",)),
    ("dense-max_indices_empty",
     lambda w, i, o, g, p: _dense(g, i, o, max_indices=None, mode=2), ANY, ("max_indices",)),
    ("dense-max_indices_dtype",
     lambda w, i, o, g, p: _dense(g, i, o, max_indices=_max_indices(w, i, o).float(), mode=2),
     ANY, ("max_indices",)),
    # _embedding_bag_per_entry_grad
    ("per_entry-grad_rows", lambda w, i, o, g, p: _per_entry(g[:1], i, o), ANY, ("grad",)),
    ("per_entry-grad_1d", lambda w, i, o, g, p: _per_entry(g[0], i, o), ANY, ()),
    ("per_entry-grad_int", lambda w, i, o, g, p: _per_entry(g.int(), i, o), ANY, ()),
    ("per_entry-index_too_big", lambda w, i, o, g, p: _per_entry(g, _bad(i, 10), o), IndexError,
     ("input", val(10))),
    ("per_entry-index_negative", lambda w, i, o, g, p: _per_entry(g, _bad(i, -4), o),
     IndexError, ("input", val(-4))),
    ("per_entry-num_weights_small",
     lambda w, i, o, g, p: _per_entry(g, i, o, num_weights=3, scale_grad_by_freq=True),
     IndexError, ("input",)),
    ("per_entry-mode_bad", lambda w, i, o, g, p: _per_entry(g, i, o, mode=3), ANY, ("mode",)),
    ("per_entry-mode_max", lambda w, i, o, g, p: _per_entry(g, i, o, mode=2), ANY, ()),
    ("per_entry-offsets_bad", lambda w, i, o, g, p: _per_entry(g, i, o + 2), ANY, ("offsets",)),
    ("per_entry-psw_shape", lambda w, i, o, g, p: _per_entry(g, i, o, psw=p[:2]), ANY,
     ("per_sample_weights",)),
    ("per_entry-padding_idx_big", lambda w, i, o, g, p: _per_entry(g, i, o, padding_idx=-12),
     ANY, ("padding_idx",)),
    # _embedding_bag_per_sample_weights_backward
    ("psw_back-grad_rows", lambda w, i, o, g, p: _psw_back(g[:2], w, i, o), ANY, ("grad",)),
    ("psw_back-grad_cols", lambda w, i, o, g, p: _psw_back(g[:, :2], w, i, o), ANY, ("grad",)),
    ("psw_back-grad_dtype", lambda w, i, o, g, p: _psw_back(g.double(), w, i, o), ANY,
     ("grad",)),
    ("psw_back-weight_1d", lambda w, i, o, g, p: _psw_back(g, w[:, 0], i, o), ANY, ("weight",)),
    ("psw_back-weight_int", lambda w, i, o, g, p: _psw_back(g, w.int(), i, o), ANY,
     ("weight",)),
    ("psw_back-index_too_big", lambda w, i, o, g, p: _psw_back(g, w, _bad(i, 10), o),
     IndexError, ("input", val(10))),
    ("psw_back-index_negative", lambda w, i, o, g, p: _psw_back(g, w, _bad(i, -9), o),
     IndexError, ("input", val(-9))),
    ("psw_back-mode_mean", lambda w, i, o, g, p: _psw_back(g, w, i, o, mode=1), ANY,
     ("per_sample_weights|mode",)),
    ("psw_back-mode_bad", lambda w, i, o, g, p: _psw_back(g, w, i, o, mode=9), ANY, ("mode",)),
    ("psw_back-offsets_bad", lambda w, i, o, g, p: _psw_back(g, w, i, o.new_tensor([0, 9, 9])),
     ANY, ("offsets",)),
    ("psw_back-offsets_dtype", lambda w, i, o, g, p: _psw_back(g, w, i.int(), o.long()), ANY,
     ("offsets",)),
    ("psw_back-padding_idx_big", lambda w, i, o, g, p: _psw_back(g, w, i, o, padding_idx=99),
     ANY, ("padding_idx",)),
]


def check_garbage(fn, exc, parts, index_dtype, device):
    weight, inp, offsets, grad, psw = _internal_base(index_dtype, device)
    before = weight.clone()
    with pytest.raises(exc, match=names(*parts)):
        fn(weight, inp, offsets, grad, psw)
    assert torch.equal(weight, before), "weight was modified by a call that failed"


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=["int32", "int64"])
@pytest.mark.parametrize("case_id, fn, exc, parts", GARBAGE, ids=[g[0] for g in GARBAGE])
def test_internal_ops_reject_garbage(case_id, fn, exc, parts, index_dtype):
    check_garbage(fn, exc, parts, index_dtype, "cpu")


def test_internal_ops_work_on_the_garbage_base():
    """The garbage cases above are each one change away from a valid call: check the valid
    calls work and agree with each other (so a garbage case cannot pass by failing for another
    reason)."""
    weight, inp, offsets, grad, psw = _internal_base()
    out, max_idx = _fwd(weight, inp, offsets, mode=2)
    ref = F.embedding_bag(inp, weight, offsets, mode="max")
    torch.testing.assert_close(out, ref)
    assert max_idx.shape == (3, DIM) and max_idx.dtype == torch.long
    dense = _dense(grad, inp, offsets, max_indices=max_idx, mode=2)
    w = weight.clone().requires_grad_()
    F.embedding_bag(inp, w, offsets, mode="max").backward(grad)
    torch.testing.assert_close(dense, w.grad)
    for mode, name in [(0, "sum"), (1, "mean")]:
        w = weight.clone().requires_grad_()
        F.embedding_bag(inp, w, offsets, mode=name).backward(grad)
        torch.testing.assert_close(_dense(grad, inp, offsets, mode=mode), w.grad)
        rows = _per_entry(grad, inp, offsets, mode=mode)
        assert rows.shape == (inp.numel(), DIM)
        torch.testing.assert_close(
            torch.zeros_like(weight).index_add_(0, inp, rows), w.grad)
    p = psw.clone().requires_grad_()
    F.embedding_bag(inp, weight, offsets, mode="sum", per_sample_weights=p).backward(grad)
    torch.testing.assert_close(_psw_back(grad, weight, inp, offsets), p.grad)
    w = weight.clone()
    _renorm(w, inp, offsets)
    w_ref = weight.clone()
    F.embedding_bag(inp, w_ref, offsets, max_norm=0.5)
    torch.testing.assert_close(w, w_ref)


# Meta (fake) kernels must reject wrong shapes and dtypes too: torch.compile traces with them.
META_GARBAGE = [
    g for g in GARBAGE
    if not any(s in g[0] for s in ("index_", "offsets_first", "offsets_decreasing",
                                   "offsets_past_end", "offsets_huge", "max_indices_too_big",
                                   "max_indices_huge", "max_indices_negative",
                                   "num_weights_small", "offsets_bad", "renorm-",
                                   "max_indices", "padding_idx", "mode_max", "mode_mean"))
]


@pytest.mark.parametrize("case_id, fn, exc, parts", META_GARBAGE, ids=[g[0] for g in META_GARBAGE])
def test_meta_kernels_reject_bad_shapes_and_dtypes(case_id, fn, exc, parts):
    weight, inp, offsets, grad, psw = (t.to("meta") for t in _internal_base())
    with pytest.raises(exc, match=names(*parts)):
        fn(weight, inp, offsets, grad, psw)


# ---------------------------------------------------------------------------------------------
# Double backward: not supported, and says so (docs/spec.md §5).

# Names the op (torch's own wording: "the derivative for '_embedding_bag_backward' is not
# implemented") and says the derivative is missing.
CLEAR_DOUBLE_BACKWARD = names(r"embedding_bag",
                              r"not (implemented|supported)|double backward|second.order")


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("shape", ["1d", "2d"])
def test_double_backward_raises_clearly(mode, shape):
    kw = base_kwargs(shape, torch.int64)
    w = kw.pop("weight").requires_grad_()
    kw["mode"] = mode
    out = mybag.embedding_bag(weight=w, **kw)

    def second_order():
        (g,) = torch.autograd.grad((out**2).sum(), w, create_graph=True)
        return torch.autograd.grad((g**2).sum(), w)

    with pytest.raises(RuntimeError, match=CLEAR_DOUBLE_BACKWARD):
        second_order()


def test_double_backward_through_per_sample_weights_raises_clearly():
    kw = base_kwargs("1d", torch.int64)
    w = kw.pop("weight").requires_grad_()
    psw = torch.rand(8, requires_grad=True)
    kw.update(mode="sum", per_sample_weights=psw)
    out = mybag.embedding_bag(weight=w, **kw)

    def second_order():
        gw, gp = torch.autograd.grad((out**2).sum(), (w, psw), create_graph=True)
        return torch.autograd.grad((gw**2).sum() + (gp**2).sum(), (w, psw))

    with pytest.raises(RuntimeError, match=CLEAR_DOUBLE_BACKWARD):
        second_order()


def test_double_backward_sparse_raises_clearly():
    kw = base_kwargs("1d", torch.int64)
    w = kw.pop("weight").requires_grad_()
    kw.update(mode="sum", sparse=True)
    out = mybag.embedding_bag(weight=w, **kw)

    def second_order():
        (g,) = torch.autograd.grad((out**2).sum(), w, create_graph=True)
        return torch.autograd.grad(torch.sparse.sum(g * g) if g.is_sparse else (g**2).sum(), w)

    with pytest.raises(RuntimeError, match=CLEAR_DOUBLE_BACKWARD):
        second_order()


def test_first_backward_with_create_graph_still_right():
    """create_graph=True alone (no second differentiation) is not an error in torch and must not
    change the first gradient."""
    kw = base_kwargs("1d", torch.int64)
    w = kw.pop("weight").requires_grad_()
    w_ref = w.detach().clone().requires_grad_()
    out = mybag.embedding_bag(weight=w, **kw)
    ref = F.embedding_bag(weight=w_ref, **kw)
    try:
        (g,) = torch.autograd.grad((out**2).sum(), w, create_graph=True)
    except RuntimeError as e:  # failing early, clearly, is acceptable too
        assert re.search(CLEAR_DOUBLE_BACKWARD, str(e)), str(e)
        return
    (g_ref,) = torch.autograd.grad((ref**2).sum(), w_ref, create_graph=True)
    torch.testing.assert_close(g, g_ref)


# ---------------------------------------------------------------------------------------------
# CUDA: the same errors, ordinary exceptions (never device-side asserts), context still usable.


def _assert_cuda_still_works():
    torch.cuda.synchronize()
    kw = base_kwargs("1d", torch.int64, "cuda")
    w = kw["weight"].clone().requires_grad_()
    out = mybag.embedding_bag(**{**kw, "weight": w})
    cpu_kw = base_kwargs("1d", torch.int64)
    w_ref = cpu_kw["weight"].clone().requires_grad_()
    ref = F.embedding_bag(**{**cpu_kw, "weight": w_ref})
    torch.testing.assert_close(out.cpu(), ref)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(w.grad.cpu(), w_ref.grad)
    torch.cuda.synchronize()


@requires_cuda
@pytest.mark.parametrize("bad, shape, index_dtype, max_norm, entry",
                         _params(entries=("functional",)))
def test_cuda_bad_input_raises_and_changes_nothing(bad, shape, index_dtype, max_norm, entry):
    check_bad(bad, shape, index_dtype, max_norm, entry, device="cuda")
    torch.cuda.synchronize()  # no pending device-side assert


MIXED_DEVICES = [
    Bad("input_on_cpu", _to_device("input", "cpu"), RuntimeError,
        _parts("input", "cpu", "cuda")),
    Bad("offsets_on_cpu", _to_device("offsets", "cpu"), RuntimeError,
        _parts("offsets", "cpu", "cuda"), shapes=("1d",)),
    Bad("weight_on_cpu", _to_device("weight", "cpu"), RuntimeError,
        _parts("weight", "cpu", "cuda")),
    Bad("psw_on_cpu", _to_device("per_sample_weights", "cpu"), RuntimeError,
        _parts("per_sample_weights", "cpu", "cuda")),
]


@requires_cuda
@pytest.mark.parametrize("max_norm", [None, 0.5])
@pytest.mark.parametrize("shape", ["1d", "2d"])
@pytest.mark.parametrize("bad", MIXED_DEVICES, ids=[b.id for b in MIXED_DEVICES])
def test_cuda_mixed_devices_raise(bad, shape, max_norm):
    if shape not in bad.shapes:
        shape = bad.shapes[0]
    kw = base_kwargs(shape, torch.int64, "cuda", max_norm)
    bad.mutate(kw, shape)
    before = snapshot(kw)
    with pytest.raises(bad.exc, match=names(*bad.parts(shape))):
        mybag.embedding_bag(**kw)
    assert_untouched(kw, before)
    torch.cuda.synchronize()


@requires_cuda
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=["int32", "int64"])
@pytest.mark.parametrize("case_id, fn, exc, parts", GARBAGE, ids=[g[0] for g in GARBAGE])
def test_cuda_internal_ops_reject_garbage(case_id, fn, exc, parts, index_dtype):
    check_garbage(fn, exc, parts, index_dtype, "cuda")
    torch.cuda.synchronize()


@requires_cuda
def test_cuda_context_still_works_after_every_error():
    for bad in BAD:
        for shape in bad.shapes:
            kw = base_kwargs(shape, torch.int64, "cuda",
                             max_norm=None if bad.sets_max_norm else 0.5)
            bad.mutate(kw, shape)
            with pytest.raises(bad.exc):
                mybag.embedding_bag(**kw)
    for case_id, fn, exc, parts in GARBAGE:
        weight, inp, offsets, grad, psw = _internal_base(torch.int64, "cuda")
        with pytest.raises(exc):
            fn(weight, inp, offsets, grad, psw)
    _assert_cuda_still_works()


def _bad_calls(device):
    w = torch.randn(10, 4, device=device)
    i = lambda *v: torch.tensor(v, device=device)
    return [
        (lambda: mybag.embedding_bag(i(1, 10, 2), w, i(0, 1), mode="sum"), IndexError,
         r"input\[1\] = 10 is out of range"),
        (lambda: mybag.embedding_bag(i(1, -1, 2), w, i(0, 1), mode="max"), IndexError,
         r"input\[1\] = -1"),
        (lambda: mybag.embedding_bag(i([1, 2], [3, 99]), w, mode="mean"), IndexError,
         r"input\[3\] = 99"),
        (lambda: mybag.embedding_bag(i(1, 2, 3), w, i(1, 2), mode="sum"), RuntimeError,
         r"offsets\[0\] has to be 0"),
        (lambda: mybag.embedding_bag(i(1, 2, 3), w, i(0, 2, 1), mode="sum"), RuntimeError,
         r"non-decreasing, but got offsets\[2\] = 1"),
        (lambda: mybag.embedding_bag(i(1, 2, 3), w, i(0, 4), mode="sum"), RuntimeError,
         r"offsets\[1\] = 4 is past the end"),
        (lambda: mybag.embedding_bag(i(1, 12, 3), w, i(0, 2), mode="sum", max_norm=1.0),
         IndexError, r"input\[1\] = 12"),
    ]


@requires_cuda
def test_cuda_and_cpu_errors_read_the_same():
    for cpu_call, gpu_call in zip(_bad_calls("cpu"), _bad_calls("cuda")):
        messages = []
        for call, error, _ in (cpu_call, gpu_call):
            with pytest.raises(error) as info:
                call()
            messages.append(str(info.value).splitlines()[0])
        assert messages[0] == messages[1]


# ---------------------------------------------------------------------------------------------
# Regression: index -1 without padding_idx. The kernels mark "no padding" with row -1, so a -1
# index once passed for padding (the CPU's AVX2 forward skipped it silently, and max mode read
# no error); it must be an IndexError like any other index out of range.


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("form", ["1d", "2d"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("where", [0, 4])
def test_minus_one_is_out_of_range_without_padding_idx(device, mode, dtype, form, index_dtype,
                                                       where):
    weight = torch.randn(NUM_EMBEDDINGS, 37, dtype=dtype, device=device) * 10
    before = weight.clone()
    input = torch.tensor([1, 2, 3, 4, 5, 6], dtype=index_dtype, device=device)
    input[where] = -1
    offsets = torch.tensor([0, 3], dtype=index_dtype, device=device)
    if form == "2d":
        input, offsets = input.reshape(2, 3), None
    for max_norm in [None, 1.0]:
        with pytest.raises(IndexError, match=names("input", val(-1))):
            mybag.embedding_bag(input, weight, offsets, mode=mode, max_norm=max_norm)
        assert torch.equal(weight, before)
