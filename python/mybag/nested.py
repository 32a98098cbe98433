"""Jagged nested-tensor input for ``mybag.embedding_bag``: one bag per component.

``torch.nn.functional.embedding_bag`` accepts a 2-D jagged ``torch.nested`` tensor ``(B, j)`` and
reduces each component to one row, by passing the nested tensor's ``values()`` as a 1-D input
and its ``offsets()`` (``B + 1`` entries) with ``include_last_offset=True``; ``per_sample_weights``
must then be a nested tensor of the same structure. This module does the same unpacking before
the operator is called (the operator itself only sees plain tensors), with two differences that
are checked here rather than left to torch's silent behaviour:

- ``offsets`` given together with a nested input raise ``ValueError`` (torch ignores them: the
  nested structure alone defines the bags, so a caller passing both has made a mistake);
- a nested tensor with holes (``lengths()`` set, e.g. from ``torch.nested.narrow``) is made
  contiguous first, so each bag is exactly its component (torch reads ``offsets()`` alone and
  so sums the gaps too).
"""

from typing import Optional, Tuple

import torch
from torch import Tensor


def is_nested(tensor: Optional[Tensor]) -> bool:
    # An fx Proxy is not a Tensor: symbolic tracing must not branch on it.
    return isinstance(tensor, Tensor) and tensor.is_nested


def _check_jagged(tensor: Tensor, name: str) -> None:
    if tensor.layout != torch.jagged:
        raise ValueError(
            f"embedding_bag: {name} is a nested tensor of layout {tensor.layout}; only "
            "torch.jagged nested tensors are supported (one bag per component)"
        )
    if tensor.dim() != 2:
        raise ValueError(
            f"embedding_bag: {name} is a nested tensor of shape {tuple(tensor.shape)} "
            f"({tensor.dim()}-D); expected a 2-D jagged nested tensor (B, j), one bag per component"
        )


def _without_holes(tensor: Tensor) -> Tensor:
    # With holes, offsets() alone would put the gaps into the bags.
    return tensor if tensor.lengths() is None else tensor.contiguous()


@torch.jit.unused
def unpack_nested(
    input: Tensor,
    offsets: Optional[Tensor],
    per_sample_weights: Optional[Tensor],
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Returns ``(values, offsets, per_sample_weights values)`` for a nested ``input`` or
    ``per_sample_weights``; the caller sets ``include_last_offset=True``."""
    if not is_nested(input):
        raise ValueError(
            "embedding_bag: per_sample_weights is a nested tensor but input is not; pass a "
            f"plain per_sample_weights shaped like input {tuple(input.shape)}, or a nested input"
        )
    if offsets is not None:
        raise ValueError(
            "embedding_bag: offsets must be None when input is a nested tensor (its components "
            f"are the bags), but got offsets of shape {tuple(offsets.shape)}"
        )
    _check_jagged(input, "input")
    weights_values: Optional[Tensor] = None
    if per_sample_weights is not None:
        if not is_nested(per_sample_weights):
            raise ValueError(
                "embedding_bag: input is a nested tensor, so per_sample_weights must be a nested "
                "tensor of the same structure, but got a plain tensor of shape "
                f"{tuple(per_sample_weights.shape)}"
            )
        # Nested sizes compare equal only for tensors built on the same offsets, as in torch.
        if per_sample_weights.size() != input.size():
            raise ValueError(
                f"embedding_bag: per_sample_weights has shape {per_sample_weights.size()}, "
                f"expected the nested structure of input {input.size()} (build it with "
                "torch.nested.nested_tensor_from_jagged(weights, input.offsets()))"
            )
        _check_jagged(per_sample_weights, "per_sample_weights")
        weights_values = _without_holes(per_sample_weights).values()
    input = _without_holes(input)
    return input.values(), input.offsets(), weights_values
