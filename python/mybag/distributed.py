"""Embedding bags whose table is a :class:`~torch.distributed.tensor.DTensor`: row-wise
(``Shard(0)``), column-wise (``Shard(1)``) or replicated over a 1-D ``DeviceMesh``.

Every rank sees the whole batch (plain tensors, the same on every rank, or DTensors, which are
gathered first) and gets the whole ``(B, D)`` result, equal to one process's on the same batch
up to the order of the additions; the rest of the model needs no change. What each placement
computes and sends per call (``docs/distributed.md`` has the sizes):

- ``Shard(0)``, row-wise: each rank holds rows ``[first_row, first_row + rows)`` and reads only
  those (mybag's ``_embedding_bag_row_shard_*`` ops: the unsharded kernels on the rank's
  entries). ``"sum"`` and ``"mean"`` add the ranks' parts with one all-reduce of ``(B, D)``;
  ``"max"`` all-gathers each rank's best values and their positions in the batch and merges
  them with the unsharded rules (first of equal values, first NaN). The backward sends nothing
  (the gradient of the output is the same on every rank) except, with ``per_sample_weights``
  that require grad, one all-reduce of their gradient. The table is never gathered.
- ``Shard(1)``, column-wise: each rank reduces its columns with the unsharded op, and one
  all-gather joins them. ``max_norm`` adds one all-reduce of the referenced rows' partial norms,
  and ``per_sample_weights`` that require grad one all-reduce of their gradient.
- ``Replicate()``: every rank computes the whole result; nothing is sent.

The weight's gradient is a DTensor of the weight's placement (each rank holds its rows' or
columns' gradient), so torch's optimizers train it. ``sparse=True`` is refused: DTensor has no
sparse layout.
"""

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

__all__ = [
    "shard_embedding_bags",
    "shard_rows",
    "sharded_embedding_bag",
    "sharded_fused_embedding_bag",
]

_MODES = {"sum": 0, "mean": 1, "max": 2}
_MAX = 2
_PLACEMENTS = {"row": Shard(0), "column": Shard(1), "replicate": Replicate()}


def shard_rows(num_rows: int, world_size: int, rank: int) -> Tuple[int, int]:
    """The rows ``(first, count)`` that ``rank`` holds of a dimension of ``num_rows`` split over
    ``world_size`` ranks as DTensor's ``Shard`` splits it (``torch.chunk``: pieces of
    ``ceil(num_rows / world_size)``, the last ones shorter or empty)."""
    piece = -(-num_rows // world_size)
    first = min(rank * piece, num_rows)
    return first, min(piece, num_rows - first)


def _layout(weight: DTensor) -> str:
    mesh = weight.device_mesh
    if mesh.ndim != 1:
        raise ValueError(
            f"embedding_bag: a DTensor weight must live on a 1-D DeviceMesh, got a mesh of "
            f"shape {tuple(mesh.shape)}"
        )
    (placement,) = weight.placements
    if isinstance(placement, Replicate):
        return "replicate"
    if isinstance(placement, Shard) and placement.dim in (0, 1):
        return "row" if placement.dim == 0 else "column"
    raise ValueError(
        f"embedding_bag: a DTensor weight must be placed Shard(0) (row-wise), Shard(1) "
        f"(column-wise) or Replicate(), got {placement!r}"
    )


def _whole(tensor: Optional[Tensor]) -> Optional[Tensor]:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _check_like_unsharded(
    input: Tensor,
    weight: DTensor,
    offsets: Optional[Tensor],
    max_norm: Optional[float],
    norm_type: float,
    scale_grad_by_freq: bool,
    mode: str,
    per_sample_weights: Optional[Tensor],
    include_last_offset: bool,
    padding_idx: Optional[int],
) -> None:
    """Every check of the unsharded op that needs no values (shapes, dtypes, mode, options),
    with its messages: the op itself, run on shapes alone (meta tensors) against the whole
    table. The shard ops then check the values against the whole table."""

    def meta(tensor: Optional[Tensor]) -> Optional[Tensor]:
        return None if tensor is None else tensor.detach().to("meta")

    table = torch.empty(weight.shape, dtype=weight.dtype, device="meta")
    torch.ops.mybag.embedding_bag(
        meta(input),
        table,
        meta(offsets),
        max_norm,
        norm_type,
        scale_grad_by_freq,
        mode,
        False,
        meta(per_sample_weights),
        include_last_offset,
        padding_idx,
    )


def _check_values(input: Tensor, offsets: Optional[Tensor], include_last_offset: bool,
                  weight: DTensor) -> None:
    """The index and offset values against the whole table, before anything is written: the
    row shard ops check them so, and renormalizing a shard of no rows checks and writes
    nothing."""
    input, offsets = _promoted(input, offsets)
    no_rows = weight.to_local().new_empty(0, weight.shape[1])
    torch.ops.mybag._embedding_bag_row_shard_renorm_(
        no_rows, input, offsets, include_last_offset and input.dim() == 1, 1.0, 2.0, 0,
        weight.shape[0],
    )


def _promoted(input: Tensor, offsets: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
    """input and offsets at one integer dtype, as the unsharded op promotes them."""
    if offsets is None or offsets.dtype == input.dtype:
        return input, offsets
    common = torch.promote_types(input.dtype, offsets.dtype)
    return input.to(common), offsets.to(common)


def _all_gather_stacked(tensor: Tensor, group) -> Tensor:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.stack(parts)


def _row_parts(local, per_sample_weights, input, offsets, mode, padding_idx,
               include_last_offset, first_row, num_weights, group):
    """The bags of a row-wise sharded table: this rank's part (its C++ shard op), combined over
    the ranks. Returns the output and this rank's rows of the maxima (max mode)."""
    output, best_rows, positions = torch.ops.mybag._embedding_bag_row_shard_forward(
        local, input, offsets, per_sample_weights, mode, padding_idx, include_last_offset,
        first_row, num_weights
    )
    if mode == _MAX:
        return torch.ops.mybag._embedding_bag_row_shard_max_merge(
            _all_gather_stacked(output, group),
            _all_gather_stacked(positions, group),
            best_rows,
            dist.get_rank(group),
        )
    dist.all_reduce(output, group=group)
    return output, best_rows


def _per_sample_weights_grad(grad, local, input, offsets, layout):
    """The per_sample_weights gradient: each rank's part for its entries, added over ranks."""
    (mode, padding_idx, include_last_offset, _, first_row, _, num_weights, group) = layout
    result = torch.ops.mybag._embedding_bag_row_shard_per_sample_weights_backward(
        grad, local, input, offsets, mode, padding_idx, include_last_offset, first_row,
        num_weights
    )
    dist.all_reduce(result, group=group)
    return result


class _RowShardedBags(torch.autograd.Function):
    """Row-wise bags whose backward gives the shard's gradient. Every rank receives the same
    output gradient, so the weight's gradient needs no communication: each rank's shard op
    takes its rows' part from it."""

    @staticmethod
    def forward(ctx, local, per_sample_weights, input, offsets, mode, padding_idx,
                include_last_offset, scale_grad_by_freq, first_row, num_weights, group):
        output, best_rows = _row_parts(local, per_sample_weights, input, offsets, mode,
                                       padding_idx, include_last_offset, first_row, num_weights,
                                       group)
        psw_needs_grad = ctx.needs_input_grad[1]
        ctx.save_for_backward(
            input, offsets, per_sample_weights, best_rows, local if psw_needs_grad else None
        )
        ctx.layout = (mode, padding_idx, include_last_offset, scale_grad_by_freq, first_row,
                      local.shape[0], num_weights, group)
        return output

    @staticmethod
    def backward(ctx, grad):
        input, offsets, per_sample_weights, best_rows, local = ctx.saved_tensors
        (mode, padding_idx, include_last_offset, scale_grad_by_freq, first_row, rows,
         num_weights, _) = ctx.layout
        grad = grad.contiguous()
        grad_weight = grad_per_sample_weights = None
        if ctx.needs_input_grad[0]:
            grad_weight = torch.ops.mybag._embedding_bag_row_shard_backward(
                grad, input, offsets, per_sample_weights, best_rows, mode, padding_idx,
                include_last_offset, scale_grad_by_freq, first_row, rows, num_weights
            )
        if ctx.needs_input_grad[1]:
            grad_per_sample_weights = _per_sample_weights_grad(grad, local, input, offsets,
                                                               ctx.layout)
        return (grad_weight, grad_per_sample_weights) + (None,) * 9


class _RowShardedFusedBags(torch.autograd.Function):
    """Row-wise bags of a FusedEmbeddingBag: the backward steps the module's optimizer on this
    rank's rows and state (_embedding_bag_row_shard_fused_update_) and gives the weight no
    gradient. As the unsharded fused op, it refuses to step a table written since the forward."""

    @staticmethod
    def forward(ctx, local, per_sample_weights, input, offsets, mode, padding_idx,
                include_last_offset, scale_grad_by_freq, first_row, num_weights, group,
                writable, step_args):
        output, best_rows = _row_parts(local, per_sample_weights, input, offsets, mode,
                                       padding_idx, include_last_offset, first_row, num_weights,
                                       group)
        ctx.save_for_backward(input, offsets, per_sample_weights, best_rows)
        ctx.layout = (mode, padding_idx, include_last_offset, scale_grad_by_freq, first_row,
                      local.shape[0], num_weights, group)
        # Held as plain references: the backward writes them.
        ctx.writable, ctx.version, ctx.step_args = writable, writable._version, step_args
        return output

    @staticmethod
    def backward(ctx, grad):
        input, offsets, per_sample_weights, best_rows = ctx.saved_tensors
        (mode, padding_idx, include_last_offset, scale_grad_by_freq, first_row, _,
         num_weights, _) = ctx.layout
        table = ctx.writable
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
            grad_per_sample_weights = _per_sample_weights_grad(grad, table, input, offsets,
                                                               ctx.layout)
        state, step, optimizer, hyperparameters = ctx.step_args
        with torch.no_grad():
            torch.ops.mybag._embedding_bag_row_shard_fused_update_(
                table, state, step, grad, input, offsets, per_sample_weights, best_rows, mode,
                padding_idx, include_last_offset, scale_grad_by_freq, optimizer,
                *hyperparameters, first_row, num_weights,
            )
        return (None, grad_per_sample_weights) + (None,) * 11


class _GatheredColumns(torch.autograd.Function):
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


class _SummedGradient(torch.autograd.Function):
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
            total = torch.full((rows.numel(),), 0.0 if p > 0 else float("inf"), dtype=accumulate)
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
    chosen = rows[scaled]
    block.index_copy_(0, chosen, (values[scaled] * factor.unsqueeze(1)).to(block.dtype))


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
    layout = _layout(weight)
    as_dtensor = any(isinstance(t, DTensor) for t in (input, offsets, per_sample_weights))
    input, offsets, per_sample_weights = (_whole(t) for t in (input, offsets, per_sample_weights))
    if sparse:
        raise ValueError(
            "embedding_bag: sparse=True needs a plain weight; this weight is a DTensor "
            f"(placed {weight.placements[0]}), which has no sparse gradient: use sparse=False"
        )
    _check_like_unsharded(input, weight, offsets, max_norm, norm_type, scale_grad_by_freq, mode,
                          per_sample_weights, include_last_offset, padding_idx)
    group = weight.device_mesh.get_group()
    if layout == "row":
        output = _row_sharded(input, weight, offsets, max_norm, norm_type, scale_grad_by_freq,
                              mode, per_sample_weights, include_last_offset, padding_idx, group)
    else:
        if layout == "column" and max_norm is not None:
            _check_values(input, offsets, include_last_offset, weight)
            # Before the differentiable view below is taken: autograd forbids writing
            # through the base of a custom Function's view.
            with torch.no_grad():
                _renorm_columns_(weight.to_local(), input, max_norm, norm_type, group)
            max_norm = None
        block = weight.to_local()
        if layout == "column":
            if per_sample_weights is not None and per_sample_weights.requires_grad:
                per_sample_weights = _SummedGradient.apply(per_sample_weights, group)
        output = torch.ops.mybag.embedding_bag(
            input, block, offsets, max_norm, norm_type, scale_grad_by_freq, mode, False,
            per_sample_weights, include_last_offset, padding_idx,
        )
        if layout == "column":
            output = _GatheredColumns.apply(output, weight.shape[1], group)
    if as_dtensor:
        return DTensor.from_local(output, weight.device_mesh, [Replicate()])
    return output


def _row_sharded(input, weight, offsets, max_norm, norm_type, scale_grad_by_freq, mode,
                 per_sample_weights, include_last_offset, padding_idx, group) -> Tensor:
    num_weights = weight.shape[0]
    first_row, rows = shard_rows(num_weights, weight.device_mesh.size(), dist.get_rank(group))
    if weight.to_local().shape[0] != rows:
        raise ValueError(
            f"embedding_bag: this rank holds {weight.to_local().shape[0]} rows of a Shard(0) weight of "
            f"{num_weights} rows, expected {rows} (DTensor's even split)"
        )
    if input.dim() == 2:
        include_last_offset = False
    input, offsets = _promoted(input, offsets)
    if max_norm is not None:
        with torch.no_grad():
            torch.ops.mybag._embedding_bag_row_shard_renorm_(
                weight.to_local(), input, offsets, include_last_offset, max_norm, norm_type,
                first_row, num_weights,
            )
    return _RowShardedBags.apply(
        weight.to_local(), per_sample_weights, input, offsets, _MODES[mode], padding_idx,
        include_last_offset, scale_grad_by_freq, first_row, num_weights, group,
    )


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
    layout = _layout(weight)
    if layout == "column" and module.optimizer == "rowwise_adagrad":
        raise ValueError(
            "FusedEmbeddingBag: optimizer='rowwise_adagrad' keeps one state value per row and "
            "cannot step a column-wise (Shard(1)) table; use placement 'row' or 'replicate'"
        )
    as_dtensor = any(isinstance(t, DTensor) for t in (input, offsets, per_sample_weights))
    input, offsets, per_sample_weights = (_whole(t) for t in (input, offsets, per_sample_weights))
    mode, max_norm, norm_type = module.mode, module.max_norm, module.norm_type
    _check_like_unsharded(input, weight, offsets, max_norm, norm_type, module.scale_grad_by_freq,
                          mode, per_sample_weights, module.include_last_offset,
                          module.padding_idx)
    state = [t.to_local() if isinstance(t, DTensor) else t for t in module.optimizer_state()]
    hyperparameters = (module.lr, module.eps, module.betas[0], module.betas[1],
                       module.weight_decay, module.lr_decay)
    group = weight.device_mesh.get_group()
    if layout == "row":
        num_weights = weight.shape[0]
        first_row, _ = shard_rows(num_weights, weight.device_mesh.size(), dist.get_rank(group))
        include_last_offset = module.include_last_offset and input.dim() == 1
        input, offsets = _promoted(input, offsets)
        with torch.no_grad():
            writable = weight.to_local()
            if max_norm is not None:
                torch.ops.mybag._embedding_bag_row_shard_renorm_(
                    writable, input, offsets, include_last_offset, max_norm, norm_type,
                    first_row, num_weights,
                )
        output = _RowShardedFusedBags.apply(
            weight.to_local(), per_sample_weights, input, offsets, _MODES[mode],
            module.padding_idx, include_last_offset, module.scale_grad_by_freq, first_row,
            num_weights, group, writable,
            (state, module.step, module.optimizer, hyperparameters),
        )
    else:
        if layout == "column":
            if max_norm is not None:
                _check_values(input, offsets, module.include_last_offset, weight)
                with torch.no_grad():
                    _renorm_columns_(weight.to_local(), input, max_norm, norm_type, group)
                max_norm = None
            if per_sample_weights is not None and per_sample_weights.requires_grad:
                per_sample_weights = _SummedGradient.apply(per_sample_weights, group)
        output = torch.ops.mybag.fused_embedding_bag(
            input, weight.to_local(), state, module.step, offsets, max_norm, norm_type,
            module.scale_grad_by_freq, mode, per_sample_weights, module.include_last_offset,
            module.padding_idx, module.optimizer, *hyperparameters,
        )
        if layout == "column":
            output = _GatheredColumns.apply(output, weight.shape[1], group)
    if as_dtensor:
        return DTensor.from_local(output, weight.device_mesh, [Replicate()])
    return output


def _sharded_weight(weight: nn.Parameter, mesh: DeviceMesh, placement: str) -> nn.Parameter:
    if placement not in _PLACEMENTS:
        raise ValueError(
            f"shard_embedding_bags: placement={placement!r}; expected one of "
            f"{sorted(_PLACEMENTS)}"
        )
    table = distribute_tensor(weight.detach(), mesh, [_PLACEMENTS[placement]])
    return nn.Parameter(table, requires_grad=weight.requires_grad)


def shard_embedding_bags(model: nn.Module, mesh: DeviceMesh, placement: str = "row") -> nn.Module:
    """Shards the table of every embedding bag in ``model`` over the 1-D ``mesh``:
    ``placement`` is ``"row"`` (``Shard(0)``), ``"column"`` (``Shard(1)``) or ``"replicate"``.

    ``torch.nn.EmbeddingBag`` modules are first swapped for :class:`mybag.EmbeddingBag`
    (:func:`mybag.swap_embedding_bags`). Each table becomes a new ``nn.Parameter`` holding a
    DTensor with rank 0's values (``distribute_tensor``), so build the optimizer after this
    call; any torch optimizer then trains it, each rank updating its own rows or columns.
    Works in place and returns the model (or the replacement, if ``model`` is itself an
    embedding bag). Every rank must call it, in the same order.

    Raises ``ValueError`` for a mesh that is not 1-D, an unknown placement, or a module built
    with ``sparse=True`` (DTensor has no sparse gradient).
    """
    from mybag.fused import FusedEmbeddingBag
    from mybag.modules import EmbeddingBag, swap_embedding_bags

    if mesh.ndim != 1:
        raise ValueError(
            f"shard_embedding_bags: mesh must be 1-D, got shape {tuple(mesh.shape)}"
        )
    model = swap_embedding_bags(model)
    modules: List[nn.Module] = [
        m for m in model.modules() if isinstance(m, (EmbeddingBag, FusedEmbeddingBag))
    ]
    for module in modules:
        if getattr(module, "sparse", False):
            raise ValueError(
                f"shard_embedding_bags: {module} has sparse=True; a sharded (DTensor) weight has "
                "no sparse gradient: build it with sparse=False"
            )
        if getattr(module, "optimizer", None) == "rowwise_adagrad" and placement == "column":
            raise ValueError(
                "shard_embedding_bags: a FusedEmbeddingBag with optimizer='rowwise_adagrad' "
                "keeps one state value per row and cannot be sharded by columns; use "
                "placement 'row' or 'replicate'"
            )
    for module in modules:
        if isinstance(module.weight, DTensor):
            continue
        module.weight = _sharded_weight(module.weight, mesh, placement)
        if isinstance(module, FusedEmbeddingBag):
            # The optimizer state lies like the table (a row-wise sum (E,) by its rows);
            # the step count stays a plain tensor, the same on every rank.
            for name in ("sum", "exp_avg", "exp_avg_sq"):
                buffer = module._buffers[name]
                if buffer is not None:
                    module._buffers[name] = distribute_tensor(buffer, mesh,
                                                              [_PLACEMENTS[placement]])
    return model
