"""torch.onnx.export of models holding mybag's module or calling mybag.embedding_bag, run in
onnxruntime and compared with eager.

Before, export failed (``unrecognized namespace mybag::embedding_bag``): ONNX has no mybag
operator. During an export mybag.embedding_bag now traces the same forward in standard ops.
"""

import warnings

import pytest
import torch
from torch import nn

import mybag

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

NUM_EMBEDDINGS = 25
DIM = 4
INPUT_1D = torch.tensor([3, 0, 7, 7, 24, 1, 0, 5, 9, 2])
OFFSETS = torch.tensor([0, 3, 3, 7])  # an empty bag; the last bag ends at len(input)
INPUT_2D = torch.tensor([[1, 0, 4], [8, 8, 0], [0, 0, 0]])  # the last bag is padding only


class Model(nn.Module):
    def __init__(self, **options):
        super().__init__()
        torch.manual_seed(5)
        self.bag = mybag.EmbeddingBag(NUM_EMBEDDINGS, DIM, **options)

    def forward(self, *args):
        return self.bag(*args)


def run_exported(model, args, tmp_path, **export_options):
    path = str(tmp_path / "model.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, path, **export_options)
    onnx.checker.check_model(onnx.load(path))
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session, names


def ort_output(session, names, args):
    feeds = {name: arg.numpy() for name, arg in zip(names, args, strict=True)}
    return torch.from_numpy(session.run(None, feeds)[0])


CASES = {
    "sum-1d": (dict(mode="sum"), (INPUT_1D, OFFSETS)),
    "mean-1d-padding": (dict(mode="mean", padding_idx=0), (INPUT_1D, OFFSETS)),
    "max-1d-padding": (dict(mode="max", padding_idx=0), (INPUT_1D, OFFSETS)),
    "mean-include_last_offset": (
        dict(mode="mean", include_last_offset=True),
        (INPUT_1D, torch.tensor([0, 3, 3, 7, 10])),
    ),
    "sum-2d-padding": (dict(mode="sum", padding_idx=0), (INPUT_2D,)),
    "mean-2d-padding": (dict(mode="mean", padding_idx=-25), (INPUT_2D,)),
    "max-2d": (dict(mode="max"), (INPUT_2D,)),
    "sum-per_sample_weights": (
        dict(mode="sum", padding_idx=7),
        (INPUT_1D, OFFSETS, torch.rand(len(INPUT_1D))),
    ),
    "mean-max_norm": (dict(mode="mean", max_norm=1.0), (INPUT_1D, OFFSETS)),
    "sum-max_norm-p1": (dict(mode="sum", max_norm=1.5, norm_type=1.0), (INPUT_2D,)),
    "sparse-scale_grad_by_freq": (
        dict(mode="sum", sparse=True, scale_grad_by_freq=True),
        (INPUT_1D, OFFSETS),
    ),
    "int32": (dict(mode="mean"), (INPUT_1D.int(), OFFSETS.int())),
}


@pytest.mark.parametrize("case", CASES)
def test_export_runs_in_onnxruntime_like_eager(case, tmp_path):
    options, args = CASES[case]
    model = Model(**options).eval()
    session, names = run_exported(model, args, tmp_path)
    with torch.no_grad():
        expected = model(*args)  # after export: max_norm has renormalized the table already
        torch.testing.assert_close(ort_output(session, names, args), expected, rtol=1e-6, atol=1e-6)


def test_exported_model_is_not_specialized_to_the_example_lengths(tmp_path):
    model = Model(mode="mean", padding_idx=0).eval()
    entries = torch.export.Dim("entries", min=2)
    bags = torch.export.Dim("bags", min=2)
    session, names = run_exported(
        model, (INPUT_1D, OFFSETS), tmp_path, dynamic_shapes=(({0: entries}, {0: bags}),)
    )
    generator = torch.Generator().manual_seed(2)
    # Dynamic dims are varargs of forward(*args), hence the extra tuple.
    for length, num_bags in [(30, 5), (4, 2), (100, 17)]:
        input = torch.randint(0, NUM_EMBEDDINGS, (length,), generator=generator)
        offsets = torch.sort(torch.randint(0, length + 1, (num_bags,), generator=generator)).values
        offsets[0] = 0
        with torch.no_grad():
            expected = model(input, offsets)
        torch.testing.assert_close(
            ort_output(session, names, (input, offsets)), expected, rtol=1e-6, atol=1e-6
        )


def test_nan_in_a_max_bag_gives_nan_as_in_eager(tmp_path):
    model = Model(mode="max").eval()
    with torch.no_grad():
        model.bag.weight[7, 1] = float("nan")  # second of bag 0, first of bag 2
        model.bag.weight[3, 2] = float("nan")  # first of bag 0
    session, names = run_exported(model, (INPUT_1D, OFFSETS), tmp_path)
    with torch.no_grad():
        expected = model(INPUT_1D, OFFSETS)
    assert expected.isnan().sum() == 3
    torch.testing.assert_close(
        ort_output(session, names, (INPUT_1D, OFFSETS)), expected, rtol=0, atol=0, equal_nan=True
    )


def test_float16_table(tmp_path):
    model = Model(mode="mean", padding_idx=0).eval().half()
    session, names = run_exported(model, (INPUT_1D, OFFSETS), tmp_path)
    with torch.no_grad():
        expected = model(INPUT_1D, OFFSETS)
    actual = ort_output(session, names, (INPUT_1D, OFFSETS))
    assert actual.dtype == torch.float16
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-3)


def test_functional_in_a_plain_module_exports(tmp_path):
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(NUM_EMBEDDINGS, DIM, dtype=torch.float64))

        def forward(self, input, offsets):
            return mybag.embedding_bag(input, self.weight, offsets, mode="sum") * 2

    model = Functional().eval()
    session, names = run_exported(model, (INPUT_1D, OFFSETS), tmp_path)
    with torch.no_grad():
        expected = model(INPUT_1D, OFFSETS)
    torch.testing.assert_close(
        ort_output(session, names, (INPUT_1D, OFFSETS)), expected, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize(
    "case", ["sum-1d", "max-1d-padding", "mean-2d-padding", "sum-per_sample_weights"]
)
def test_torchscript_exporter_too(case, tmp_path):
    options, args = CASES[case]
    model = Model(**options).eval()
    session, names = run_exported(model, args, tmp_path, dynamo=False, opset_version=18)
    with torch.no_grad():
        expected = model(*args)
    torch.testing.assert_close(ort_output(session, names, args), expected, rtol=1e-6, atol=1e-6)


def test_export_keeps_the_eager_argument_checks(tmp_path):
    model = Model(mode="mean").eval()
    with pytest.raises(Exception, match="per_sample_weights"):
        run_exported(model, (INPUT_1D, OFFSETS, torch.rand(len(INPUT_1D))), tmp_path)


# ---------------------------------------------------------------------------------------------
# Models that call torch.ops.mybag.embedding_bag directly do not export (documented): there is
# no decomposition of mybag's ops in torch's global table, because inductor (torch 2.13) then
# refuses to compile them. The exporter's error names the op.


class RawOp(nn.Module):
    def __init__(self, **options):
        super().__init__()
        torch.manual_seed(6)
        self.weight = nn.Parameter(torch.randn(NUM_EMBEDDINGS, DIM))
        self.options = options

    def forward(self, *args):
        return torch.ops.mybag.embedding_bag(args[0], self.weight, *args[1:2], **self.options)


def test_a_model_calling_the_operator_fails_naming_it(tmp_path):
    model = RawOp(mode="sum").eval()
    with pytest.raises(Exception, match="mybag"):
        run_exported(model, (INPUT_1D, OFFSETS), tmp_path)


def test_no_decomposition_of_mybag_ops_in_torchs_table():
    # One there makes inductor refuse the op ("a decomposition exists, we should switch to it").
    from torch._decomp import decomposition_table

    assert not [op for op in decomposition_table if "mybag" in str(op)]
