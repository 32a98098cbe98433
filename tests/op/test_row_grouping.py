"""The CPU backward groups a batch's entries by row with a radix sort (csrc/mybag/cpu/row_sort.cpp)
whose digit width and number of passes follow the table's row count and the batch's size, and
which splits large batches between threads. Each row's gradient must still be the sum of its
entries in input order, whatever the passes and threads: here against numpy's ``add.at``, which
adds repeated indices one after another in index order, on values whose sum changes with the
order (magnitudes from 1e-4 to 1e4).
"""

import mybag
import numpy as np
import pytest
import torch

# (rows, entries): what the sort does with them (2-thread task split from 32,768 entries on).
SHAPES = {
    "one_pass": (50, 100),
    "one_wide_pass_two_tasks": (30_000, 70_000),
    "two_passes_two_tasks": (70_000, 70_000),
    "two_passes_1M_rows": (1_000_000, 70_000),
    "three_passes_small_batch": (100_000, 300),
    "one_row": (1, 1000),
    "one_entry": (10, 1),
}


def order_sensitive_values(shape, generator):
    magnitude = 10.0 ** (torch.rand(shape, generator=generator) * 8 - 4)
    return (torch.randn(shape, generator=generator) * magnitude).float()


def input_order_weight_grad(indices, grad_rows, num_rows):
    ref = np.zeros((num_rows, grad_rows.shape[1]), dtype=np.float32)
    np.add.at(ref, indices.numpy(), grad_rows.numpy())
    return torch.from_numpy(ref)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_row_gradient_sums_in_input_order(shape, index_dtype, threads):
    rows, entries = SHAPES[shape]
    g = torch.Generator().manual_seed(rows + entries)
    dim = 4
    # Rows drawn from a small set too, so that rows repeat many times in large tables.
    hot = torch.randint(0, rows, (64,), generator=g)
    indices = torch.where(torch.rand(entries, generator=g) < 0.5,
                          hot[torch.randint(0, 64, (entries,), generator=g)],
                          torch.randint(0, rows, (entries,), generator=g))
    # Bags of one entry: each entry's gradient is its bag's row of grad, unscaled.
    offsets = torch.arange(entries)
    grad = order_sensitive_values((entries, dim), g)
    weight = torch.zeros(rows, dim, requires_grad=True)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        out = mybag.embedding_bag(indices.to(index_dtype), weight, offsets.to(index_dtype),
                                  mode="sum")
        out.backward(grad)
    finally:
        torch.set_num_threads(old)
    expected = input_order_weight_grad(indices, grad, rows)
    torch.testing.assert_close(weight.grad, expected, rtol=0, atol=0)


def test_input_order_is_what_the_values_detect():
    # The check above can fail: the same entries summed in another order give other bits.
    g = torch.Generator().manual_seed(0)
    grad = order_sensitive_values((1000, 4), g)
    indices = torch.zeros(1000, dtype=torch.long)
    forward = input_order_weight_grad(indices, grad, 1)
    backward = input_order_weight_grad(indices.flip(0), grad.flip(0), 1)
    assert not torch.equal(forward, backward)
