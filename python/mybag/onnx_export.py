"""mybag's forward in standard torch ops, for ``torch.onnx.export``.

ONNX has no mybag operator, and neither of torch's exporters can translate one without extra
arguments from the user. Two hooks make a user's plain ``torch.onnx.export(model, args)`` work:

- during an ONNX export (``torch.onnx.is_in_onnx_export()``), ``mybag.embedding_bag`` (and so
  the module) computes its forward with ``embedding_bag_for_export`` instead of calling the
  operator: both exporters translate those ops, and every option is covered;
- for models that call ``torch.ops.mybag.embedding_bag`` directly, the internal forward op
  it decomposes into has a decomposition in torch's decomposition table, which the default
  (dynamo) exporter applies; it also computes ``max_indices``, so it is a faithful
  decomposition wherever else the table is used. (``max_norm`` there is an in-place op on the
  table, which has no decomposition: that export fails naming ``_embedding_bag_renorm_``.)

The graph is vectorized (gather, scatter-add, scatter-reduce; no loop over bags).

Forward only: ``scale_grad_by_freq`` and ``sparse`` change nothing here. ``max_norm`` is
applied to the gathered rows instead of to the table in place; the output is the same.
Checks on index values (out of range, bad offsets) are not part of the graph.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch._decomp import register_decomposition

_MODES = ("sum", "mean", "max")


def _bag_of_each_entry(num_entries: int, bag_starts: Tensor, num_bags: int) -> Tensor:
    """For 1-D input: the bag each entry belongs to, from where each bag starts. A 1 at every
    start but the first, summed cumulatively, counts the bags begun before each entry."""
    marks = torch.zeros(num_entries + 1, dtype=torch.int64, device=bag_starts.device)
    later_starts = bag_starts[1:num_bags].to(torch.int64)
    marks = marks.scatter_add(0, later_starts, torch.ones_like(later_starts))
    return marks.cumsum(0)[:num_entries]


def _renormed(rows: Tensor, max_norm: float, norm_type: float) -> Tensor:
    # Eager scales each referenced row of the table in place by this factor; scaling the
    # gathered copies gives the same output without mutating the exported weight.
    norms = torch.linalg.vector_norm(rows, ord=norm_type, dim=1, keepdim=True)
    scale = torch.where(norms > max_norm, max_norm / (norms + 1e-7), torch.ones_like(norms))
    return rows * scale


def embedding_bag_for_export(
    input: Tensor,
    weight: Tensor,
    offsets: Optional[Tensor],
    max_norm: Optional[float],
    norm_type: float,
    mode: str,
    per_sample_weights: Optional[Tensor],
    include_last_offset: bool,
    padding_idx: Optional[int],
) -> Tensor:
    """The forward of ``mybag.embedding_bag`` in exportable torch ops; same arguments."""
    if mode not in _MODES:
        raise ValueError(f"embedding_bag: mode has to be one of {_MODES}, but got mode={mode!r}")
    if weight.dim() != 2:
        raise ValueError(f"embedding_bag: weight has to be 2-D, but got {weight.dim()}-D")
    if per_sample_weights is not None and mode != "sum":
        raise NotImplementedError(
            f"embedding_bag: per_sample_weights is only supported for mode='sum', got mode={mode!r}"
        )
    if input.dim() == 2:
        if offsets is not None:
            raise ValueError("embedding_bag: offsets must be None when input is 2-D")
        include_last_offset = False
    elif input.dim() == 1:
        if offsets is None or offsets.dim() != 1:
            raise ValueError("embedding_bag: 1-D input needs 1-D offsets")
    else:
        raise ValueError(f"embedding_bag: input has to be 1-D or 2-D, but got {input.dim()}-D")
    output, _ = _reduce_bags(
        weight,
        input,
        offsets,
        per_sample_weights,
        mode,
        padding_idx,
        include_last_offset,
        max_norm,
        norm_type,
        with_winners=False,
    )
    return output


@register_decomposition(torch.ops.mybag._embedding_bag_forward.default)
def _forward_decomposition(
    weight: Tensor,
    input: Tensor,
    offsets: Optional[Tensor],
    per_sample_weights: Optional[Tensor],
    mode: int,
    padding_idx: Optional[int],
    include_last_offset: bool,
    scale_grad_by_freq: bool,
    sparse: bool,
) -> Tuple[Tensor, Tensor]:
    # The internal op's arguments are already checked and normalized by the public op.
    return _reduce_bags(
        weight,
        input,
        offsets,
        per_sample_weights,
        _MODES[mode],
        padding_idx,
        include_last_offset,
        None,
        2.0,
        with_winners=True,
    )


def _reduce_bags(
    weight: Tensor,
    input: Tensor,
    offsets: Optional[Tensor],
    per_sample_weights: Optional[Tensor],
    mode: str,
    padding_idx: Optional[int],
    include_last_offset: bool,
    max_norm: Optional[float],
    norm_type: float,
    with_winners: bool,
) -> Tuple[Tensor, Tensor]:
    """``(output, max_indices)`` as the internal forward op returns them; ``max_indices`` is
    computed (max mode) only ``with_winners``."""
    dim = weight.shape[1]
    if input.dim() == 2:
        num_bags, bag_length = input.shape
        bag = torch.arange(num_bags, device=input.device).unsqueeze(1)
        bag = bag.expand(num_bags, bag_length).reshape(-1)
    else:
        num_bags = offsets.shape[0] - 1 if include_last_offset else offsets.shape[0]
        bag = _bag_of_each_entry(input.shape[0], offsets, num_bags)

    indices = input.reshape(-1).to(torch.int64)
    # float16/bfloat16 accumulate in float32, as the kernels do.
    acc_dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
    rows = torch.nn.functional.embedding(indices, weight).to(acc_dtype)
    if max_norm is not None:
        rows = _renormed(rows, max_norm, norm_type)
    if per_sample_weights is not None:
        rows = rows * per_sample_weights.reshape(-1, 1).to(acc_dtype)

    if padding_idx is not None:
        padding_row = padding_idx + weight.shape[0] if padding_idx < 0 else padding_idx
        counted = indices != padding_row
    else:
        counted = torch.ones_like(indices, dtype=torch.bool)
    counts = torch.zeros(num_bags, dtype=acc_dtype, device=weight.device)
    counts = counts.scatter_add(0, bag, counted.to(acc_dtype))
    bag_per_value = bag.unsqueeze(1).expand(-1, dim)

    if mode == "max":
        lowest = torch.full_like(rows, float("-inf"))
        rows = torch.where(counted.unsqueeze(1), rows, lowest)
        output = torch.full((num_bags, dim), float("-inf"), dtype=acc_dtype, device=weight.device)
        output = output.scatter_reduce(0, bag_per_value, rows, reduce="amax", include_self=True)
        # The TorchScript exporter (dynamo=False) declares this result flat, (B * D,), which
        # fails onnxruntime's shape inference below: state the shape it has.
        output = output.reshape(num_bags, dim)
        # A NaN makes its feature NaN in every case, as in the kernels; ONNX's max reduction
        # leaves that to the runtime (onnxruntime drops some NaNs), so count them.
        nans = torch.zeros((num_bags, dim), dtype=acc_dtype, device=weight.device)
        nans = nans.scatter_add(0, bag_per_value, rows.isnan().to(acc_dtype))
        if with_winners:
            winners = _winners(rows, indices, counted, bag_per_value, output, nans > 0)
        output = torch.where(nans > 0, float("nan"), output)
        # An empty bag (or one of padding only) gives zeros, not -inf.
        output = torch.where(counts.unsqueeze(1) > 0, output, torch.zeros_like(output))
    else:
        rows = torch.where(counted.unsqueeze(1), rows, torch.zeros_like(rows))
        output = torch.zeros((num_bags, dim), dtype=acc_dtype, device=weight.device)
        output = output.scatter_add(0, bag_per_value, rows)
        if mode == "mean":
            output = output / counts.clamp(min=1).unsqueeze(1)
    if not (with_winners and mode == "max"):
        winners = torch.empty((0, 0), dtype=torch.int64, device=weight.device)
    return output.to(weight.dtype), winners


def _winners(
    rows: Tensor,
    indices: Tensor,
    counted: Tensor,
    bag_per_value: Tensor,
    bag_max: Tensor,
    bag_has_nan: Tensor,
) -> Tensor:
    """max mode's ``max_indices``: for each (bag, feature) the table row of the entry that
    won, by the kernels' rule (the first NaN if there is one, else the first maximum), or -1
    for a bag with no counted entry."""
    num_entries = rows.shape[0]
    wins = torch.where(
        bag_has_nan.gather(0, bag_per_value), rows.isnan(), rows == bag_max.gather(0, bag_per_value)
    )
    wins = wins & counted.unsqueeze(1)
    position = torch.arange(num_entries, device=rows.device).unsqueeze(1).expand_as(rows)
    # "No winner" is position num_entries, where a -1 is appended to the rows.
    first = torch.full_like(bag_max, num_entries, dtype=torch.int64)
    first = first.scatter_reduce(
        0, bag_per_value, torch.where(wins, position, num_entries), reduce="amin", include_self=True
    )
    row_or_none = torch.cat([indices, indices.new_full((1,), -1)])
    return row_or_none[first]
