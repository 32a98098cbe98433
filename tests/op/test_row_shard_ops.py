"""The row shard ops (csrc/mybag/row_shard_ops.cpp) in one process: a table cut into row shards
as DTensor cuts it, each shard's op called with its layout (first_row, num_weights), and the
parts combined as mybag.distributed combines them over ranks (added, or merged for max), must
give the unsharded ops' results, on every device. The multi-process tests are
tests/frontends/test_sharded.py."""

import itertools

import mybag
import mybag.distributed
import pytest
import torch
from conftest import DEVICES

ops = torch.ops.mybag
MODE_NUMBERS = {"sum": 0, "mean": 1, "max": 2}
NUM_WEIGHTS = 11
DIM = 4


def shards(weight, world):
    for rank in range(world):
        first, rows = mybag.distributed.shard_rows(weight.shape[0], world, rank)
        yield rank, first, weight[first : first + rows]


def case(device, two_d=False, ties=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    if ties:
        weight = torch.randint(-1, 2, (NUM_WEIGHTS, DIM), generator=generator).double()
    else:
        weight = torch.randn(NUM_WEIGHTS, DIM, generator=generator, dtype=torch.float64)
    if two_d:
        return weight.to(device), torch.randint(0, NUM_WEIGHTS, (5, 3), generator=generator,
                                                device="cpu").to(device), None
    input = torch.randint(0, NUM_WEIGHTS, (14,), generator=generator)
    offsets = torch.tensor([0, 3, 3, 8, 9, 13])
    return weight.to(device), input.to(device), offsets.to(device)


def combined_forward(weight, input, offsets, mode, world, padding_idx=None, psw=None,
                     include_last_offset=False):
    """Every shard's part, added (sum, mean) or merged (max), and the ranks' max rows."""
    parts = [ops._embedding_bag_row_shard_forward(shard, input, offsets, psw, MODE_NUMBERS[mode],
                                                  padding_idx, include_last_offset, first,
                                                  weight.shape[0])
             for _, first, shard in shards(weight, world)]
    if mode != "max":
        return sum(p[0] for p in parts), None
    # The two all-reduces of mybag.distributed, done here over the stacked parts.
    keys = torch.stack([ops._embedding_bag_row_shard_max_keys(p[0], p[2]) for p in parts])
    keys = keys.amax(0)
    claims = torch.stack([ops._embedding_bag_row_shard_max_claims(p[0], p[2], keys)
                          for p in parts]).amin(0)
    merged = [ops._embedding_bag_row_shard_max_merge(p[0], p[2], p[1], keys, claims)
              for p in parts]
    # The ranks' rows of the maxima, back in the whole table's numbering (-1: another rank's).
    firsts = [first for _, first, _ in shards(weight, world)]
    rows = torch.full_like(parts[0][1], -1)
    for (output, best_rows), first in zip(merged, firsts):
        torch.testing.assert_close(output, merged[0][0], rtol=0, atol=0, equal_nan=True)
        assert not (rows.ge(0) & best_rows.ge(0)).any(), "two ranks claim one maximum"
        rows = torch.where(best_rows >= 0, best_rows + first, rows)
    return merged[0][0], (rows, [b for _, b in merged])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("world", [1, 2, 3, 5, 12])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("two_d,padding_idx,ties", [(False, None, False), (True, 2, False),
                                                     (False, -1, True), (True, None, True)])
def test_parts_combine_to_the_unsharded_op(device, world, mode, two_d, padding_idx, ties):
    weight, input, offsets = case(device, two_d, ties)
    output, max_rows = combined_forward(weight, input, offsets, mode, world, padding_idx)
    expected, expected_rows = ops._embedding_bag_forward(weight, input, offsets, None,
                                                         MODE_NUMBERS[mode], padding_idx, False,
                                                         False, False)
    torch.testing.assert_close(output, expected, rtol=1e-13, atol=1e-13)
    if mode == "max":
        assert torch.equal(max_rows[0], expected_rows), "the first of equal values must win"

    grad = torch.randn(expected.shape, dtype=weight.dtype, device=device)
    whole = ops._embedding_bag_dense_backward(grad, input, offsets, None, expected_rows,
                                              NUM_WEIGHTS, MODE_NUMBERS[mode], padding_idx,
                                              False, False)
    pieces = [ops._embedding_bag_row_shard_backward(
                  grad, input, offsets, None, max_rows[1][rank] if mode == "max"
                  else torch.empty(0, dtype=torch.long, device=device),
                  MODE_NUMBERS[mode], padding_idx, False, False, first, shard.shape[0],
                  NUM_WEIGHTS)
              for rank, first, shard in shards(weight, world)]
    torch.testing.assert_close(torch.cat(pieces), whole, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("device", DEVICES)
def test_max_keeps_the_first_nan_and_the_first_of_equals_across_shards(device):
    weight = torch.zeros(NUM_WEIGHTS, DIM, dtype=torch.float64, device=device)
    weight[9, 0] = -float("nan")  # later shard, earlier entry; the sign bit comes along
    weight[1, 0] = float("nan")
    weight[10, 1] = 5.0
    weight[0, 1] = 5.0
    input = torch.tensor([9, 1, 10, 0, 3], device=device)
    offsets = torch.tensor([0, 2], device=device)
    for world in (2, 3, 4):
        output, rows = combined_forward(weight, input, offsets, "max", world)
        expected, expected_rows = ops._embedding_bag_forward(weight, input, offsets, None, 2,
                                                             None, False, False, False)
        torch.testing.assert_close(output, expected, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(output.signbit(), expected.signbit())
        assert rows[0].tolist() == expected_rows.tolist()
        assert expected_rows[0, 0] == 9 and expected_rows[1, 1] == 10


@pytest.mark.parametrize("device", DEVICES)
def test_max_keeps_the_sign_of_the_first_zero_and_empty_bags_give_zero(device):
    weight = torch.zeros(NUM_WEIGHTS, DIM, dtype=torch.float64, device=device)
    weight[10] = -0.0
    weight[1, :2] = float("-inf")
    input = torch.tensor([10, 0, 1, 5, 1], device=device)
    offsets = torch.tensor([0, 2, 3, 3], device=device)  # bag 2 is empty
    for world in (2, 3):
        output, rows = combined_forward(weight, input, offsets, "max", world)
        expected, expected_rows = ops._embedding_bag_forward(weight, input, offsets, None, 2,
                                                             None, False, False, False)
        assert torch.equal(output.signbit(), expected.signbit()), output
        torch.testing.assert_close(output, expected, rtol=0, atol=0)
        assert rows[0].tolist() == expected_rows.tolist()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("world", [2, 3])
def test_per_sample_weights_include_last_offset_and_scale_grad_by_freq(device, world):
    weight, input, offsets = case(device, seed=3)
    # include_last_offset: 5 bags ending at 12; entries 12 and 13 are read by no bag.
    offsets = torch.tensor([0, 3, 3, 8, 9, 12], device=device)
    psw = torch.rand(input.shape, dtype=torch.float64, device=device)
    output, _ = combined_forward(weight, input, offsets, "sum", world, 0, psw, True)
    expected = ops._embedding_bag_forward(weight, input, offsets, psw, 0, 0, True, True,
                                          False)[0]
    torch.testing.assert_close(output, expected, rtol=1e-13, atol=1e-13)
    grad = torch.randn(expected.shape, dtype=torch.float64, device=device)
    empty = torch.empty(0, dtype=torch.long, device=device)
    for mode, weights in [(0, psw), (1, None)]:
        whole = ops._embedding_bag_dense_backward(grad, input, offsets, weights, empty,
                                                  NUM_WEIGHTS, mode, 0, True, True)
        pieces = [ops._embedding_bag_row_shard_backward(grad, input, offsets, weights, empty,
                                                        mode, 0, True, True, first,
                                                        shard.shape[0], NUM_WEIGHTS)
                  for _, first, shard in shards(weight, world)]
        torch.testing.assert_close(torch.cat(pieces), whole, rtol=1e-13, atol=1e-13)
    whole = ops._embedding_bag_per_sample_weights_backward(grad, weight, input, offsets, 0, 0,
                                                           True)
    parts = sum(ops._embedding_bag_row_shard_per_sample_weights_backward(
                    grad, shard, input, offsets, 0, 0, True, first, NUM_WEIGHTS)
                for _, first, shard in shards(weight, world))
    torch.testing.assert_close(parts, whole, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_renorm_of_each_shard_is_the_unsharded_renorm(device, norm_type):
    weight, input, offsets = case(device, seed=4)
    whole = weight.clone()
    ops._embedding_bag_renorm_(whole, input, offsets, False, 0.8, norm_type)
    sharded = weight.clone()
    for _, first, shard in shards(sharded, 3):
        ops._embedding_bag_row_shard_renorm_(shard, input, offsets, False, 0.8, norm_type, first,
                                             NUM_WEIGHTS)
    assert not torch.equal(whole, weight)
    torch.testing.assert_close(sharded, whole, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optimizer,mode", list(itertools.product(
    ["sgd", "adagrad", "rowwise_adagrad", "adam"], ["sum", "mean", "max"])))
def test_fused_update_of_each_shard_is_the_unsharded_update(device, optimizer, mode):
    weight, input, offsets = case(device, seed=5)
    state_shapes = {"sgd": [], "adagrad": [weight.shape], "rowwise_adagrad": [weight.shape[:1]],
                    "adam": [weight.shape, weight.shape]}[optimizer]
    state = [torch.rand(shape, dtype=torch.float64, device=device) for shape in state_shapes]
    step = torch.tensor(2, device=device)
    number = MODE_NUMBERS[mode]
    output, rows = ops._embedding_bag_forward(weight, input, offsets, None, number, None, False,
                                              False, False)
    grad = torch.randn(output.shape, dtype=torch.float64, device=device)
    hyper = (0.1, 1e-8, 0.9, 0.99, 0.01, 0.0)
    whole, whole_state, whole_step = weight.clone(), [s.clone() for s in state], step.clone()
    ops._embedding_bag_fused_update_(whole, whole_state, whole_step, grad, input, offsets, None,
                                     rows, number, None, False, False, optimizer, *hyper)
    sharded, sharded_state = weight.clone(), [s.clone() for s in state]
    _, max_rows = combined_forward(weight, input, offsets, mode, 3)
    for rank, first, shard in shards(sharded, 3):
        local_rows = max_rows[1][rank] if mode == "max" else torch.empty(
            0, dtype=torch.long, device=device)
        local_state = [s[first : first + shard.shape[0]] for s in sharded_state]
        local_step = step.clone()
        ops._embedding_bag_row_shard_fused_update_(shard, local_state, local_step, grad, input,
                                                   offsets, None, local_rows, number, None,
                                                   False, False, optimizer, *hyper, first,
                                                   NUM_WEIGHTS)
        assert int(local_step) == int(whole_step) == 3
    assert not torch.equal(whole, weight)
    torch.testing.assert_close(sharded, whole, rtol=1e-13, atol=1e-13)
    for got, want in zip(sharded_state, whole_state):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("device", DEVICES)
def test_errors_name_the_whole_table_and_the_layout(device):
    weight, input, offsets = case(device)
    shard = weight[4:8]
    bad = input.clone()
    bad[5] = NUM_WEIGHTS
    with pytest.raises(IndexError) as unsharded:
        ops._embedding_bag_forward(weight, bad, offsets, None, 0, None, False, False, False)
    with pytest.raises(IndexError) as sharded:
        ops._embedding_bag_row_shard_forward(shard, bad, offsets, None, 0, None, False, 4,
                                             NUM_WEIGHTS)
    assert str(sharded.value) == str(unsharded.value)
    with pytest.raises(RuntimeError, match="first_row=9 does not fit in a table of "
                                           "num_weights=11"):
        ops._embedding_bag_row_shard_forward(shard, input, offsets, None, 0, None, False, 9,
                                             NUM_WEIGHTS)
    with pytest.raises(RuntimeError, match="padding_idx"):
        ops._embedding_bag_row_shard_forward(shard, input, offsets, None, 0, NUM_WEIGHTS, False,
                                             4, NUM_WEIGHTS)
    decreasing = torch.tensor([0, 5, 3], device=device)
    with pytest.raises(RuntimeError, match="offsets"):
        ops._embedding_bag_row_shard_forward(shard, input, decreasing, None, 0, None, False, 4,
                                             NUM_WEIGHTS)
    values = torch.zeros(3, DIM, device=device)
    positions = torch.zeros(3, DIM, dtype=torch.long, device=device)
    with pytest.raises(RuntimeError, match=r"must be \(B, D\) values and positions"):
        ops._embedding_bag_row_shard_max_keys(values, positions[:2])
    with pytest.raises(RuntimeError, match=r"reduced max keys must be \(2, B, D\)"):
        ops._embedding_bag_row_shard_max_claims(values, positions, values)
    keys = ops._embedding_bag_row_shard_max_keys(values, positions)
    with pytest.raises(RuntimeError, match="reduced max claims"):
        ops._embedding_bag_row_shard_max_merge(values, positions, positions, keys, positions[:1])
    before = shard.clone()
    with pytest.raises(IndexError):
        ops._embedding_bag_row_shard_renorm_(shard, bad, offsets, False, 0.1, 2.0, 4,
                                             NUM_WEIGHTS)
    assert torch.equal(shard, before), "a failed renorm must write nothing"
