"""Index dtypes of input and offsets (docs/spec.md §1, §6): every pair torch accepts gives
torch's result, forward and backward; the pairs torch rejects are rejected with a message that
names both dtypes. One deliberate difference: a bool input or offsets, which torch promotes
and accepts, is rejected (README, "Differences from torch")."""

import itertools

import mybag
import pytest
import torch
import torch.nn.functional as F

INTEGER_DTYPES = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64]
INDEX_DTYPES = {torch.int32, torch.int64}


def torch_accepts(input_dtype, offsets_dtype):
    return torch.promote_types(input_dtype, offsets_dtype) in INDEX_DTYPES


@pytest.mark.parametrize("input_dtype, offsets_dtype",
                         list(itertools.product(INTEGER_DTYPES, INTEGER_DTYPES)))
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_1d_pairs_as_torch(input_dtype, offsets_dtype, mode):
    weight = torch.randn(20, 4, dtype=torch.float64, requires_grad=True)
    input = torch.tensor([1, 2, 19, 0, 3, 3, 7], dtype=input_dtype)
    offsets = torch.tensor([0, 2, 2, 5], dtype=offsets_dtype)
    if not torch_accepts(input_dtype, offsets_dtype):
        with pytest.raises(RuntimeError):
            F.embedding_bag(input, weight, offsets, mode=mode)
        with pytest.raises(RuntimeError, match="input and offsets have to hold int32 or int64"):
            mybag.embedding_bag(input, weight, offsets, mode=mode)
        return
    expected = F.embedding_bag(input, weight, offsets, mode=mode)
    (expected_grad,) = torch.autograd.grad(expected.sum(), weight)
    got = mybag.embedding_bag(input, weight, offsets, mode=mode)
    (got_grad,) = torch.autograd.grad(got.sum(), weight)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(got_grad, expected_grad, rtol=0, atol=0)


def test_both_narrow_message_names_both_dtypes():
    weight = torch.randn(20, 4)
    with pytest.raises(RuntimeError, match=r"input of dtype Short and offsets of dtype Char"):
        mybag.embedding_bag(torch.tensor([1, 2], dtype=torch.int16), weight,
                            torch.tensor([0], dtype=torch.int8))


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16])
def test_narrow_2d_input_rejected_as_torch(dtype):
    weight = torch.randn(20, 4)
    input = torch.tensor([[1, 2], [3, 4]], dtype=dtype)
    with pytest.raises(RuntimeError):
        F.embedding_bag(input, weight)
    with pytest.raises(RuntimeError, match="input has to hold int32 or int64 indices"):
        mybag.embedding_bag(input, weight)


def test_module_accepts_int16_input_with_int64_offsets():
    bag = mybag.EmbeddingBag(20, 4, mode="sum")
    reference = torch.nn.EmbeddingBag.from_pretrained(bag.weight.detach(), mode="sum")
    input = torch.tensor([1, 2, 19, 0], dtype=torch.int16)
    offsets = torch.tensor([0, 2])
    torch.testing.assert_close(bag(input, offsets), reference(input, offsets), rtol=0, atol=0)


@pytest.mark.parametrize("which", ["input", "offsets"])
def test_bool_is_rejected(which):
    # torch promotes bool beside int64 and accepts it; a boolean is not an index, so mybag
    # rejects it (a documented difference).
    weight = torch.randn(20, 4)
    input = torch.tensor([1, 0, 1])
    offsets = torch.tensor([0, 1])
    if which == "input":
        input = input.bool()
    else:
        offsets = torch.tensor([False, True])
    with pytest.raises(RuntimeError, match="int32 or int64"):
        mybag.embedding_bag(input, weight, offsets)
