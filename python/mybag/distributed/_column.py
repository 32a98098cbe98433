"""Column-wise (``Shard(1)``) tables: each rank reduces its block of columns with the
unsharded op; the blocks are joined by one all-gather. A row's norm for max_norm, and the
per_sample_weights gradient, add up over the ranks' columns."""

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor

from mybag.distributed._layout import check_values, shard_rows


def _all_gather_stacked(tensor: Tensor, group) -> Tensor:
    """Every rank's ``tensor`` (all of one shape), stacked in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.stack(parts)


class GatheredColumns(torch.autograd.Function):
    """Joins the ranks' column blocks of the output; the backward keeps this rank's block of
    the (replicated) output gradient."""

    @staticmethod
    def forward(ctx, block, columns, group):
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        widest = shard_rows(columns, world, 0)[1]
        padded = block.new_zeros(block.shape[0], widest)
        padded[:, : block.shape[1]] = block
        blocks = _all_gather_stacked(padded, group)
        ctx.columns = shard_rows(columns, world, rank)
        return torch.cat(
            [blocks[r, :, : shard_rows(columns, world, r)[1]] for r in range(world)], dim=1
        )

    @staticmethod
    def backward(ctx, grad):
        first, count = ctx.columns
        return grad[:, first : first + count], None, None


class SummedGradient(torch.autograd.Function):
    """The identity, whose backward adds the gradient over the ranks (for a tensor every rank
    holds whole, used with the part of a sharded table that each rank holds)."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _renorm_columns_(block: Tensor, input: Tensor, max_norm: float, norm_type: float,
                     group) -> None:
    """max_norm on a column-wise sharded table: each referenced row's norm from the partial
    norms of every rank's columns (one all-reduce; two for the infinite norms, which also
    count NaNs), then each rank scales its columns of the rows above max_norm, rounding as the
    unsharded op does (mybag/row_norm.h)."""
    rows = torch.unique(input.reshape(-1)).long()
    accumulate = torch.float32 if block.dtype in (torch.float16, torch.bfloat16) else block.dtype
    values = block.index_select(0, rows).to(accumulate)
    magnitudes = values.abs()
    p = float(norm_type)
    if p in (float("inf"), float("-inf")):
        if magnitudes.shape[1] == 0:
            total = torch.full((rows.numel(),), 0.0 if p > 0 else float("inf"), dtype=accumulate,
                               device=block.device)
        else:
            total = magnitudes.amax(1) if p > 0 else magnitudes.amin(1)
        nans = magnitudes.isnan().sum(1, dtype=accumulate)
        dist.all_reduce(total, op=dist.ReduceOp.MAX if p > 0 else dist.ReduceOp.MIN, group=group)
        dist.all_reduce(nans, group=group)
        norm = torch.where(nans > 0, float("nan"), total)
    else:
        if p == 0:
            total = (magnitudes != 0).sum(1, dtype=accumulate)
        elif p == 1:
            total = magnitudes.sum(1)
        elif p == 2:
            total = (values * values).sum(1)
        else:
            total = magnitudes.pow(p).sum(1)
        dist.all_reduce(total, group=group)
        norm = total.sqrt() if p == 2 else total if p in (0, 1) else total.pow(1 / p)
    # Rounded to the table's dtype before the comparison, as torch does.
    norm = norm.to(block.dtype).double()
    scaled = norm > max_norm
    factor = (max_norm / (norm[scaled] + 1e-7)).to(accumulate)
    block.index_copy_(0, rows[scaled], (values[scaled] * factor.unsqueeze(1)).to(block.dtype))


def prepare_columns(weight: DTensor, input: Tensor, offsets: Optional[Tensor],
                    include_last_offset: bool, max_norm: Optional[float], norm_type: float,
                    per_sample_weights: Optional[Tensor], group) -> Optional[Tensor]:
    """max_norm applied to this rank's columns (after the values are checked against the whole
    table), and per_sample_weights made to receive the sum of the ranks' gradients."""
    if max_norm is not None:
        check_values(input, offsets, include_last_offset, weight)
        with torch.no_grad():
            # Before the forward's differentiable view is taken: autograd forbids writing
            # through the base of a custom Function's view.
            _renorm_columns_(weight.to_local(), input, max_norm, norm_type, group)
    if per_sample_weights is not None and per_sample_weights.requires_grad:
        per_sample_weights = SummedGradient.apply(per_sample_weights, group)
    return per_sample_weights
