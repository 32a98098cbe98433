"""What every placement shares: the split of a dimension over the ranks, and the checks a
sharded call runs before it sends or writes anything."""

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor, Replicate, Shard

MODES = {"sum": 0, "mean": 1, "max": 2}
MAX = 2
PLACEMENTS = {"row": Shard(0), "column": Shard(1), "replicate": Replicate()}


def shard_rows(num_rows: int, world_size: int, rank: int) -> Tuple[int, int]:
    """The rows ``(first, count)`` that ``rank`` holds of a dimension of ``num_rows`` split over
    ``world_size`` ranks as DTensor's ``Shard`` splits it (``torch.chunk``: pieces of
    ``ceil(num_rows / world_size)``, the last ones shorter or empty)."""
    piece = -(-num_rows // world_size)
    first = min(rank * piece, num_rows)
    return first, min(piece, num_rows - first)


def layout_of(weight: DTensor) -> str:
    """``"row"``, ``"column"`` or ``"replicate"``; a ValueError for anything else."""
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


def whole(tensor: Optional[Tensor]) -> Optional[Tensor]:
    """A DTensor input made whole on every rank; plain tensors as they are."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def check_like_unsharded(input, weight, offsets, max_norm, norm_type, scale_grad_by_freq, mode,
                         per_sample_weights, include_last_offset, padding_idx) -> None:
    """Every check of the unsharded op that needs no values (shapes, dtypes, mode, options),
    with its messages: the op itself, run on shapes alone (meta tensors) against the whole
    table. The shard ops then check the values against the whole table."""

    def meta(tensor: Optional[Tensor]) -> Optional[Tensor]:
        return None if tensor is None else tensor.detach().to("meta")

    table = torch.empty(weight.shape, dtype=weight.dtype, device="meta")
    torch.ops.mybag.embedding_bag(meta(input), table, meta(offsets), max_norm, norm_type,
                                  scale_grad_by_freq, mode, False, meta(per_sample_weights),
                                  include_last_offset, padding_idx)


def promoted(input: Tensor, offsets: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
    """input and offsets at one integer dtype, as the unsharded op promotes them."""
    if offsets is None or offsets.dtype == input.dtype:
        return input, offsets
    common = torch.promote_types(input.dtype, offsets.dtype)
    return input.to(common), offsets.to(common)


def check_values(input: Tensor, offsets: Optional[Tensor], include_last_offset: bool,
                 weight: DTensor) -> None:
    """The index and offset values against the whole table, before anything is written: the
    row shard ops check them so, and renormalizing a shard of no rows checks and writes
    nothing."""
    input, offsets = promoted(input, offsets)
    no_rows = weight.to_local().new_empty(0, weight.shape[1])
    torch.ops.mybag._embedding_bag_row_shard_renorm_(
        no_rows, input, offsets, include_last_offset and input.dim() == 1, 1.0, 2.0, 0,
        weight.shape[0],
    )
