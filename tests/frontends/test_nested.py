"""Jagged nested-tensor input: one bag per component, as torch.nn.functional.embedding_bag does.

Before mybag handled it, a nested input reached the operator and failed with
``NotImplementedError: mybag._embedding_bag_forward.default``.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mybag

NUM_EMBEDDINGS = 20
DIM = 5
TIGHT = dict(rtol=1e-12, atol=1e-12)


def jagged(*components, dtype=torch.int64):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "nested tensors are a prototype"
        return torch.nested.nested_tensor(
            [torch.tensor(c, dtype=dtype) for c in components], layout=torch.jagged
        )


def bags():
    # An empty component, a repeated index, padding candidates (index 0).
    return jagged([3, 1, 4, 1], [5], [], [0, 9, 2, 6, 0], [19, 0])


def weights_like(nested, requires_grad=False):
    """per_sample_weights with the structure of ``nested`` (built on its offsets, as torch
    requires), and the leaf that holds the values."""
    values = torch.rand(nested.values().shape, dtype=torch.float64, requires_grad=requires_grad)
    return torch.nested.nested_tensor_from_jagged(values, nested.offsets()), values


def table():
    return torch.randn(NUM_EMBEDDINGS, DIM, dtype=torch.float64)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 0])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_functional_forward_and_weight_grad_match_torch(mode, padding_idx, index_dtype):
    nested = jagged([3, 1, 4, 1], [5], [], [0, 9, 2, 6, 0], [19, 0], dtype=index_dtype)
    theirs_weight = table().requires_grad_()
    ours_weight = theirs_weight.detach().clone().requires_grad_()
    theirs = F.embedding_bag(nested, theirs_weight, mode=mode, padding_idx=padding_idx)
    ours = mybag.embedding_bag(nested, ours_weight, mode=mode, padding_idx=padding_idx)
    assert ours.shape == (5, DIM)
    torch.testing.assert_close(ours, theirs, **TIGHT)
    grad = torch.randn_like(theirs)
    theirs.backward(grad)
    ours.backward(grad)
    torch.testing.assert_close(ours_weight.grad, theirs_weight.grad, **TIGHT)


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_per_sample_weights_forward_and_both_grads_match_torch(padding_idx):
    nested = bags()
    weight = table()
    psw, psw_values = weights_like(nested, requires_grad=True)
    theirs_weight = weight.clone().requires_grad_()
    ours_weight = weight.clone().requires_grad_()
    ours_psw_values = psw_values.detach().clone().requires_grad_()
    ours_psw = torch.nested.nested_tensor_from_jagged(ours_psw_values, nested.offsets())

    theirs = F.embedding_bag(
        nested, theirs_weight, mode="sum", per_sample_weights=psw, padding_idx=padding_idx
    )
    ours = mybag.embedding_bag(
        nested, ours_weight, mode="sum", per_sample_weights=ours_psw, padding_idx=padding_idx
    )
    torch.testing.assert_close(ours, theirs, **TIGHT)
    grad = torch.randn_like(theirs)
    theirs.backward(grad)
    ours.backward(grad)
    torch.testing.assert_close(ours_weight.grad, theirs_weight.grad, **TIGHT)
    torch.testing.assert_close(ours_psw_values.grad, psw_values.grad, **TIGHT)


def test_nested_leaf_per_sample_weights_get_a_nested_gradient():
    nested = bags()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        psw = (
            torch.nested.nested_tensor_from_jagged(
                torch.rand(nested.values().shape, dtype=torch.float64), nested.offsets()
            )
            .detach()
            .requires_grad_()
        )
    weight = table()
    mybag.embedding_bag(nested, weight, mode="sum", per_sample_weights=psw).sum().backward()
    expected = weight[nested.values()].sum(1)
    assert psw.grad.is_nested
    torch.testing.assert_close(psw.grad.values(), expected, **TIGHT)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("sparse", [False, True])
def test_module_matches_torch_module(mode, sparse):
    if mode == "max" and sparse:
        pytest.skip("max mode rejects sparse, as torch does")
    theirs = nn.EmbeddingBag(NUM_EMBEDDINGS, DIM, mode=mode, sparse=sparse, dtype=torch.float64)
    ours = mybag.EmbeddingBag(NUM_EMBEDDINGS, DIM, mode=mode, sparse=sparse, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    nested = bags()
    out_theirs = theirs(nested)
    out_ours = ours(nested)
    torch.testing.assert_close(out_ours, out_theirs, **TIGHT)
    grad = torch.randn_like(out_theirs)
    out_theirs.backward(grad)
    out_ours.backward(grad)
    assert ours.weight.grad.is_sparse == sparse
    torch.testing.assert_close(ours.weight.grad.to_dense(), theirs.weight.grad.to_dense(), **TIGHT)


def test_include_last_offset_is_irrelevant_for_nested_input():
    # torch sets include_last_offset=True itself: the module's setting must not matter.
    nested = bags()
    weight = table()
    expected = F.embedding_bag(nested, weight, mode="sum")
    for include_last_offset in (False, True):
        ours = mybag.embedding_bag(
            nested, weight, mode="sum", include_last_offset=include_last_offset
        )
        torch.testing.assert_close(ours, expected, **TIGHT)


def test_nested_input_with_holes_uses_each_component_only():
    # Beyond torch: torch reads offsets() alone and sums the gaps between components too.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nested = torch.nested.narrow(
            torch.arange(12).view(3, 4),
            1,
            torch.tensor([0, 1, 0]),
            torch.tensor([2, 3, 1]),
            layout=torch.jagged,
        )
    assert nested.lengths() is not None
    weight = table()
    expected = torch.stack([weight[[0, 1]].sum(0), weight[[5, 6, 7]].sum(0), weight[[8]].sum(0)])
    torch.testing.assert_close(mybag.embedding_bag(nested, weight, mode="sum"), expected, **TIGHT)


def test_offsets_with_nested_input_is_a_value_error():
    # Beyond torch: torch silently ignores offsets here.
    with pytest.raises(ValueError, match=r"offsets must be None when input is a nested tensor"):
        mybag.embedding_bag(bags(), table(), torch.tensor([0, 2]), mode="sum")


def test_plain_per_sample_weights_with_nested_input_is_a_value_error():
    nested = bags()
    plain = torch.rand(nested.values().shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"must have the same shape"):
        F.embedding_bag(nested, table(), mode="sum", per_sample_weights=plain)
    with pytest.raises(ValueError, match=r"per_sample_weights must be a nested tensor"):
        mybag.embedding_bag(nested, table(), mode="sum", per_sample_weights=plain)


def test_per_sample_weights_of_another_structure_is_a_value_error():
    nested = bags()
    other = jagged([3, 1, 4, 1], [5], [], [0, 9, 2, 6, 0], [19, 0]).double()
    with pytest.raises(ValueError, match=r"must have the same shape"):
        F.embedding_bag(nested, table(), mode="sum", per_sample_weights=other)
    with pytest.raises(ValueError, match=r"per_sample_weights has shape .*nested structure"):
        mybag.embedding_bag(nested, table(), mode="sum", per_sample_weights=other)


def test_nested_per_sample_weights_with_plain_input_is_a_value_error():
    psw, _ = weights_like(bags())
    with pytest.raises(ValueError, match=r"per_sample_weights is a nested tensor but input is not"):
        mybag.embedding_bag(
            torch.tensor([1, 2]), table(), torch.tensor([0]), mode="sum", per_sample_weights=psw
        )


def test_per_sample_weights_with_mean_mode_is_rejected_as_in_torch():
    nested = bags()
    psw, _ = weights_like(nested)
    with pytest.raises(NotImplementedError, match="per_sample_weights"):
        F.embedding_bag(nested, table(), mode="mean", per_sample_weights=psw)
    with pytest.raises(NotImplementedError, match="per_sample_weights"):
        mybag.embedding_bag(nested, table(), mode="mean", per_sample_weights=psw)


def test_three_dimensional_nested_input_is_a_value_error():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nested = torch.nested.nested_tensor(
            [torch.tensor([[1, 2]]), torch.tensor([[4, 5], [1, 1]])], layout=torch.jagged
        )
    with pytest.raises(ValueError, match=r"input is a nested tensor of shape .*3-D"):
        mybag.embedding_bag(nested, table())


def test_strided_nested_input_is_a_value_error():
    # torch fails with an AttributeError here; mybag names the layout.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nested = torch.nested.nested_tensor([torch.tensor([1, 2, 3]), torch.tensor([4])])
    with pytest.raises(ValueError, match=r"layout torch.strided; only torch.jagged"):
        mybag.embedding_bag(nested, table())


def test_out_of_range_index_in_a_component_names_the_index():
    with pytest.raises(IndexError, match="20"):
        mybag.embedding_bag(jagged([1, 20], [3]), table(), mode="sum")


def test_scripted_module_still_works_on_plain_input():
    # The nested branch is skipped by TorchScript; scripting must still compile.
    scripted = torch.jit.script(mybag.EmbeddingBag(NUM_EMBEDDINGS, DIM, mode="sum"))
    out = scripted(torch.tensor([[1, 2], [3, 4]]))
    assert out.shape == (2, DIM)


def test_the_operator_itself_names_a_nested_argument():
    # torch.ops.mybag.embedding_bag takes plain tensors (as aten's embedding_bag does); the
    # error says which argument is nested and where nested input is taken.
    with pytest.raises(ValueError, match=r"input is a nested tensor.*mybag.embedding_bag"):
        torch.ops.mybag.embedding_bag(bags(), table(), mode="sum")
    psw, _ = weights_like(bags())
    with pytest.raises(ValueError, match=r"per_sample_weights is a nested tensor"):
        torch.ops.mybag.embedding_bag(
            torch.tensor([1, 2]), table(), torch.tensor([0]), mode="sum", per_sample_weights=psw
        )


def test_compiled_with_nested_input_matches_torch():
    torch._dynamo.reset()
    theirs_weight = table().requires_grad_()
    ours_weight = theirs_weight.detach().clone().requires_grad_()
    compiled = torch.compile(
        lambda nested: mybag.embedding_bag(nested, ours_weight, mode="mean", padding_idx=0),
        backend="aot_eager",
        fullgraph=True,
    )
    nested = bags()
    ours = compiled(nested)
    theirs = F.embedding_bag(nested, theirs_weight, mode="mean", padding_idx=0)
    torch.testing.assert_close(ours, theirs, **TIGHT)
    ours.sum().backward()
    theirs.sum().backward()
    torch.testing.assert_close(ours_weight.grad, theirs_weight.grad, **TIGHT)
