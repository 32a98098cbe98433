"""The two sharded calls, ``mybag.embedding_bag`` and ``mybag.FusedEmbeddingBag.forward`` on a
DTensor table: one preparation (checks, whole inputs), then each placement's way."""

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, Replicate

from mybag.distributed._column import GatheredColumns, prepare_columns
from mybag.distributed._layout import MODES, check_like_unsharded, layout_of, whole
from mybag.distributed._row import RowShard, RowShardedBags, RowShardedFusedBags, prepare_rows


class _Options(NamedTuple):
    mode: str
    max_norm: Optional[float]
    norm_type: float
    scale_grad_by_freq: bool
    include_last_offset: bool
    padding_idx: Optional[int]


def _sharded(weight: DTensor, input, offsets, per_sample_weights, o: _Options,
             rows: Callable[[RowShard, Optional[Tensor]], Tensor],
             blocks: Callable[..., Tensor]) -> Tensor:
    """rows(shard, per_sample_weights) runs a row-wise call; blocks(block, input, offsets,
    per_sample_weights, max_norm) the unsharded op on a column block or a replicated table."""
    layout = layout_of(weight)
    as_dtensor = any(isinstance(t, DTensor) for t in (input, offsets, per_sample_weights))
    input, offsets, per_sample_weights = (whole(t) for t in (input, offsets, per_sample_weights))
    check_like_unsharded(input, weight, offsets, o.max_norm, o.norm_type, o.scale_grad_by_freq,
                         o.mode, per_sample_weights, o.include_last_offset, o.padding_idx)
    group = weight.device_mesh.get_group()
    if layout == "row":
        shard = prepare_rows(weight, input, offsets, o.include_last_offset, o.max_norm,
                             o.norm_type, group)
        output = rows(shard, per_sample_weights)
    else:
        max_norm = o.max_norm
        if layout == "column":
            per_sample_weights = prepare_columns(weight, input, offsets, o.include_last_offset,
                                                 max_norm, o.norm_type, per_sample_weights,
                                                 group)
            max_norm = None  # applied
        output = blocks(weight.to_local(), input, offsets, per_sample_weights, max_norm)
        if layout == "column":
            output = GatheredColumns.apply(output, weight.shape[1], group)
    if as_dtensor:
        return DTensor.from_local(output, weight.device_mesh, [Replicate()])
    return output


def sharded_embedding_bag(
    input: Tensor,
    weight: DTensor,
    offsets: Optional[Tensor] = None,
    max_norm: Optional[float] = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    mode: str = "mean",
    sparse: bool = False,
    per_sample_weights: Optional[Tensor] = None,
    include_last_offset: bool = False,
    padding_idx: Optional[int] = None,
) -> Tensor:
    """:func:`mybag.embedding_bag` on a table that is a DTensor (``Shard(0)``, ``Shard(1)`` or
    ``Replicate()`` on a 1-D mesh); :func:`mybag.embedding_bag` calls it for such a weight.

    Every rank passes the same whole batch (or DTensors of it) and gets the whole result: a
    plain tensor, or a replicated DTensor if any of ``input``, ``offsets`` and
    ``per_sample_weights`` was a DTensor. Raises what the unsharded op raises, and a
    ``ValueError`` for ``sparse=True`` or another mesh or placement.
    """
    layout_of(weight)
    if sparse:
        raise ValueError(
            "embedding_bag: sparse=True needs a plain weight; this weight is a DTensor "
            f"(placed {weight.placements[0]}), which has no sparse gradient: use sparse=False"
        )
    o = _Options(mode, max_norm, norm_type, scale_grad_by_freq, include_last_offset, padding_idx)
    group = weight.device_mesh.get_group()

    def rows(shard: RowShard, per_sample_weights):
        return RowShardedBags.apply(weight.to_local(), per_sample_weights, shard, MODES[mode],
                                    padding_idx, scale_grad_by_freq, group)

    def blocks(block, input, offsets, per_sample_weights, max_norm):
        return torch.ops.mybag.embedding_bag(input, block, offsets, max_norm, norm_type,
                                             scale_grad_by_freq, mode, False,
                                             per_sample_weights, include_last_offset,
                                             padding_idx)

    return _sharded(weight, input, offsets, per_sample_weights, o, rows, blocks)


def sharded_fused_embedding_bag(
    module: nn.Module,
    input: Tensor,
    offsets: Optional[Tensor] = None,
    per_sample_weights: Optional[Tensor] = None,
) -> Tensor:
    """:meth:`mybag.FusedEmbeddingBag.forward` for a module whose table (and optimizer state)
    is a DTensor: the backward steps the module's optimizer on each rank's rows (row-wise) or
    columns (column-wise) of the table and state, or on every rank's whole copy (replicated).
    ``"rowwise_adagrad"`` keeps one value per row, which column-wise blocks cannot update
    alone: it is refused for ``Shard(1)``. Everything else is as
    :func:`sharded_embedding_bag`."""
    weight = module.weight
    if layout_of(weight) == "column" and module.optimizer == "rowwise_adagrad":
        raise ValueError(
            "FusedEmbeddingBag: optimizer='rowwise_adagrad' keeps one state value per row and "
            "cannot step a column-wise (Shard(1)) table; use placement 'row' or 'replicate'"
        )
    o = _Options(module.mode, module.max_norm, module.norm_type, module.scale_grad_by_freq,
                 module.include_last_offset, module.padding_idx)
    state = [t.to_local() if isinstance(t, DTensor) else t for t in module.optimizer_state()]
    hyperparameters = (module.lr, module.eps, module.betas[0], module.betas[1],
                       module.weight_decay, module.lr_decay)
    group = weight.device_mesh.get_group()

    def rows(shard: RowShard, per_sample_weights):
        return RowShardedFusedBags.apply(
            weight.to_local(), per_sample_weights, shard, MODES[o.mode], o.padding_idx,
            o.scale_grad_by_freq, group, (state, module.step, module.optimizer, hyperparameters),
        )

    def blocks(block, input, offsets, per_sample_weights, max_norm):
        return torch.ops.mybag.fused_embedding_bag(
            input, block, state, module.step, offsets, max_norm, o.norm_type,
            o.scale_grad_by_freq, o.mode, per_sample_weights, o.include_last_offset,
            o.padding_idx, module.optimizer, *hyperparameters,
        )

    return _sharded(weight, input, offsets, per_sample_weights, o, rows, blocks)
