"""Row-wise (``Shard(0)``) tables: each rank holds rows ``[first_row, first_row + rows)`` and
runs mybag's row shard ops (csrc/mybag/row_shard_ops.cpp) on them; the ranks' parts are added
(sum, mean) or merged (max) here. Every rank receives the same output gradient, so the
backward sends nothing for the weight: each rank's shard op takes its rows' part from it."""

from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor

from mybag.distributed._layout import MAX, promoted, shard_rows


class RowShard(NamedTuple):
    """A row-wise call, prepared: this rank's layout, and the batch as the shard ops take it."""

    first_row: int
    num_weights: int
    input: Tensor
    offsets: Optional[Tensor]
    include_last_offset: bool
    writable: Tensor  # this rank's rows, for writes outside autograd


def prepare_rows(weight: DTensor, input: Tensor, offsets: Optional[Tensor],
                 include_last_offset: bool, max_norm: Optional[float], norm_type: float,
                 group) -> RowShard:
    """This rank's layout (its row count checked against DTensor's split), the indices
    promoted to one dtype, and max_norm applied to this rank's rows (after the values are
    checked against the whole table)."""
    num_weights = weight.shape[0]
    first_row, rows = shard_rows(num_weights, weight.device_mesh.size(), dist.get_rank(group))
    with torch.no_grad():
        # Taken before the differentiable view the forward uses: autograd forbids writing
        # through the base of a custom Function's view.
        writable = weight.to_local()
    if writable.shape[0] != rows:
        raise ValueError(
            f"embedding_bag: this rank holds {writable.shape[0]} rows of a Shard(0) weight "
            f"of {num_weights} rows, expected {rows} (DTensor's even split)"
        )
    include_last_offset = include_last_offset and input.dim() == 1
    input, offsets = promoted(input, offsets)
    if max_norm is not None:
        with torch.no_grad():
            torch.ops.mybag._embedding_bag_row_shard_renorm_(
                writable, input, offsets, include_last_offset, max_norm, norm_type, first_row,
                num_weights,
            )
    return RowShard(first_row, num_weights, input, offsets, include_last_offset, writable)


def _bags(local, per_sample_weights, shard: RowShard, mode, padding_idx, group):
    """The bags: this rank's part, combined over the ranks. Returns the output and this rank's
    rows of the maxima (max mode)."""
    output, best_rows, positions = torch.ops.mybag._embedding_bag_row_shard_forward(
        local, shard.input, shard.offsets, per_sample_weights, mode, padding_idx,
        shard.include_last_offset, shard.first_row, shard.num_weights,
    )
    if mode == MAX:
        keys = torch.ops.mybag._embedding_bag_row_shard_max_keys(output, positions)
        dist.all_reduce(keys, op=dist.ReduceOp.MAX, group=group)
        claims = torch.ops.mybag._embedding_bag_row_shard_max_claims(output, positions, keys)
        dist.all_reduce(claims, op=dist.ReduceOp.MIN, group=group)
        return torch.ops.mybag._embedding_bag_row_shard_max_merge(output, positions, best_rows,
                                                                  keys, claims)
    dist.all_reduce(output, group=group)
    return output, best_rows


def _per_sample_weights_grad(grad, local, shard: RowShard, mode, padding_idx, group):
    """Each rank's part of the per_sample_weights gradient (its entries), added over ranks."""
    result = torch.ops.mybag._embedding_bag_row_shard_per_sample_weights_backward(
        grad, local, shard.input, shard.offsets, mode, padding_idx, shard.include_last_offset,
        shard.first_row, shard.num_weights,
    )
    dist.all_reduce(result, group=group)
    return result


class RowShardedBags(torch.autograd.Function):
    """Row-wise bags whose backward gives this rank's rows' gradient."""

    @staticmethod
    def forward(ctx, local, per_sample_weights, shard, mode, padding_idx, scale_grad_by_freq,
                group):
        output, best_rows = _bags(local, per_sample_weights, shard, mode, padding_idx, group)
        ctx.save_for_backward(per_sample_weights, best_rows,
                              local if ctx.needs_input_grad[1] else None)
        ctx.args = (shard, mode, padding_idx, scale_grad_by_freq, group)
        return output

    @staticmethod
    def backward(ctx, grad):
        per_sample_weights, best_rows, local = ctx.saved_tensors
        shard, mode, padding_idx, scale_grad_by_freq, group = ctx.args
        grad = grad.contiguous()
        grad_weight = grad_per_sample_weights = None
        if ctx.needs_input_grad[0]:
            grad_weight = torch.ops.mybag._embedding_bag_row_shard_backward(
                grad, shard.input, shard.offsets, per_sample_weights, best_rows, mode,
                padding_idx, shard.include_last_offset, scale_grad_by_freq, shard.first_row,
                shard.writable.shape[0], shard.num_weights,
            )
        if ctx.needs_input_grad[1]:
            grad_per_sample_weights = _per_sample_weights_grad(grad, local, shard, mode,
                                                               padding_idx, group)
        return grad_weight, grad_per_sample_weights, None, None, None, None, None


class RowShardedFusedBags(torch.autograd.Function):
    """Row-wise bags of a FusedEmbeddingBag: the backward steps the module's optimizer on this
    rank's rows and state (_embedding_bag_row_shard_fused_update_) and gives the weight no
    gradient. As the unsharded fused op, it refuses to step a table written since the forward.
    step_args: (state, step, optimizer, hyperparameters), written by the backward."""

    @staticmethod
    def forward(ctx, local, per_sample_weights, shard, mode, padding_idx, scale_grad_by_freq,
                group, step_args):
        output, best_rows = _bags(local, per_sample_weights, shard, mode, padding_idx, group)
        ctx.save_for_backward(per_sample_weights, best_rows)
        ctx.args = (shard, mode, padding_idx, scale_grad_by_freq, group, step_args)
        # The table is held as a plain reference (the backward writes it), checked by version.
        ctx.version = shard.writable._version
        return output

    @staticmethod
    def backward(ctx, grad):
        per_sample_weights, best_rows = ctx.saved_tensors
        shard, mode, padding_idx, scale_grad_by_freq, group, step_args = ctx.args
        table = shard.writable
        if table._version != ctx.version:
            raise RuntimeError(
                "fused_embedding_bag: weight was modified after this forward and before its "
                "backward, so this step's gradient no longer fits it. Run one forward per "
                "table between optimizer steps."
            )
        grad = grad.contiguous()
        grad_per_sample_weights = None
        if ctx.needs_input_grad[1]:
            # From the rows as the forward read them: before the step.
            grad_per_sample_weights = _per_sample_weights_grad(grad, table, shard, mode,
                                                               padding_idx, group)
        state, step, optimizer, hyperparameters = step_args
        with torch.no_grad():
            torch.ops.mybag._embedding_bag_row_shard_fused_update_(
                table, state, step, grad, shard.input, shard.offsets, per_sample_weights,
                best_rows, mode, padding_idx, shard.include_last_offset, scale_grad_by_freq,
                optimizer, *hyperparameters, shard.first_row, shard.num_weights,
            )
        return None, grad_per_sample_weights, None, None, None, None, None, None
