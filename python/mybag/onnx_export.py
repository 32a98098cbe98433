"""mybag's forward in standard torch ops, for ``torch.onnx.export``.

ONNX has no mybag operator, and neither of torch's exporters can translate one without extra
arguments from the user. So, during an ONNX export (``torch.onnx.is_in_onnx_export()``),
``mybag.embedding_bag`` (and so the module) computes its forward with
``embedding_bag_for_export`` instead of calling the operator: both exporters translate those
ops, and every option is covered. A model that calls ``torch.ops.mybag.embedding_bag`` itself
does not export (the exporter names the op). A decomposition of the internal op in torch's
global decomposition table would let it, but inductor (torch 2.13) then refuses to compile the
op at all ("a decomposition exists, we should switch to it"), so there is none.

The graph is vectorized (gather, scatter-add, scatter-reduce; no loop over bags).

Forward only: ``scale_grad_by_freq`` and ``sparse`` change nothing here. ``max_norm`` is
applied to the gathered rows instead of to the table in place; the output is the same.
Checks on index values (out of range, bad offsets) are not part of the graph.
"""

from typing import Optional

import torch
from torch import Tensor

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


# TorchScript compiles mybag.embedding_bag, which calls this only while exporting to ONNX.
@torch.jit.unused
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
    return _reduce_bags(
        weight,
        input,
        offsets,
        per_sample_weights,
        mode,
        padding_idx,
        include_last_offset,
        max_norm,
        norm_type,
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
) -> Tensor:
    """The bags' reductions, as the internal forward op computes them."""
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
        output = torch.where(nans > 0, float("nan"), output)
        # An empty bag (or one of padding only) gives zeros, not -inf.
        output = torch.where(counts.unsqueeze(1) > 0, output, torch.zeros_like(output))
    else:
        rows = torch.where(counted.unsqueeze(1), rows, torch.zeros_like(rows))
        output = torch.zeros((num_bags, dim), dtype=acc_dtype, device=weight.device)
        output = output.scatter_add(0, bag_per_value, rows)
        if mode == "mean":
            output = output / counts.clamp(min=1).unsqueeze(1)
    return output.to(weight.dtype)

