"""The functional form, with torch.nn.functional.embedding_bag's signature."""

from typing import Optional

import torch
from torch import Tensor, nn

from mybag.nested import is_nested, unpack_nested
from mybag.onnx_export import embedding_bag_for_export


# TorchScript compiles the branch that calls these too: jit.unused keeps their imports out
# of it.
@torch.jit.unused
def _is_dtensor(tensor: Tensor) -> bool:
    """A sharded or replicated table (mybag.distributed); checked without importing
    torch.distributed where it is not built. Every eager call asks: plain tensors and
    Parameters are answered by their exact type alone, before any lookup in torch.distributed
    (a DTensor Parameter's type is DTensor)."""
    if type(tensor) in (torch.Tensor, nn.Parameter) or not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


@torch.jit.unused
def _sharded_embedding_bag(
    input: Tensor,
    weight: Tensor,
    offsets: Optional[Tensor],
    max_norm: Optional[float],
    norm_type: float,
    scale_grad_by_freq: bool,
    mode: str,
    sparse: bool,
    per_sample_weights: Optional[Tensor],
    include_last_offset: bool,
    padding_idx: Optional[int],
) -> Tensor:
    from mybag.distributed import sharded_embedding_bag

    return sharded_embedding_bag(input, weight, offsets, max_norm, norm_type, scale_grad_by_freq,
                                 mode, sparse, per_sample_weights, include_last_offset,
                                 padding_idx)


def embedding_bag(
    input: Tensor,
    weight: Tensor,
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
    r"""Sums, averages or takes the maximum of bags of embedding rows, without building the
    intermediate ``(N, D)`` gather: a drop-in for :func:`torch.nn.functional.embedding_bag`.

    Args:
        input (LongTensor or IntTensor): the row indices. Either 1-D ``(N,)``, split into bags
            by ``offsets``, or 2-D ``(B, L)``, one bag of ``L`` indices per row, or a 2-D
            jagged ``torch.nested`` tensor ``(B, j)``, one bag per component (then
            ``offsets`` must be None and ``per_sample_weights``, if given, a nested tensor of
            the same structure; see :mod:`mybag.nested`).
        weight (Tensor): the embedding table, ``(num_embeddings, embedding_dim)``; float32,
            float64, float16 or bfloat16 (the last two accumulate in float32).
        offsets (LongTensor or IntTensor, optional): for 1-D ``input`` only: where each bag
            starts in ``input``. ``offsets[0]`` must be 0 and offsets must not decrease. May
            have a different integer dtype from ``input``.
        max_norm (float, optional): every row referenced by ``input`` whose ``norm_type``-norm
            exceeds ``max_norm`` is scaled in place, under no-grad, to norm ``max_norm``
            before the lookup. Validation happens first: a call that fails changes nothing.
        norm_type (float): the ``p`` of that p-norm. Default ``2``.
        scale_grad_by_freq (bool): divide each row's gradient by how often its index occurs
            in ``input``. Not with ``mode="max"``.
        mode (str): ``"sum"``, ``"mean"`` (the default) or ``"max"``.
        sparse (bool): the gradient w.r.t. ``weight`` is a sparse COO tensor. Not with
            ``mode="max"``. Unlike torch, works together with ``scale_grad_by_freq``.
        per_sample_weights (Tensor, optional): ``mode="sum"`` only; shaped like ``input``,
            of ``weight``'s dtype: each row is scaled by its weight before the sum.
        include_last_offset (bool): ``offsets`` has ``B + 1`` entries for ``B`` bags (CSR
            form). The last bag ends at the end of ``input``. Ignored for 2-D ``input``.
        padding_idx (int, optional): entries equal to it are skipped: they add nothing, are
            not counted by ``mode="mean"`` and get no gradient. May be negative
            (``num_embeddings + padding_idx``).

    A ``weight`` that is a :class:`~torch.distributed.tensor.DTensor` (row-wise, column-wise
    or replicated) is handled by :func:`mybag.distributed.sharded_embedding_bag`.

    Returns:
        Tensor ``(B, embedding_dim)`` of ``weight``'s dtype and device; empty bags give zeros.

    Raises:
        ValueError: bad shapes, a bad ``mode``, ``offsets`` missing or misplaced, ``max``
            mode with ``scale_grad_by_freq`` or ``sparse``.
        IndexError: an index outside ``[0, num_embeddings)``.
        NotImplementedError: ``per_sample_weights`` outside ``mode="sum"``.
        RuntimeError: other bad values or dtypes (offsets, ``padding_idx``, devices).

    Example::

        >>> weight = torch.tensor([[0.1, 0.2], [0.0, 0.1], [0.4, 0.0]])
        >>> embedding_bag(torch.tensor([1, 2, 0]), weight, torch.tensor([0, 2]), mode="sum")
        tensor([[0.4000, 0.1000],
                [0.1000, 0.2000]])
    """
    if not torch.jit.is_scripting():
        if is_nested(input) or is_nested(per_sample_weights):
            # As torch does: the components are the bags, given as values + B + 1 offsets.
            input, offsets, per_sample_weights = unpack_nested(input, offsets, per_sample_weights)
            include_last_offset = True
        if _is_dtensor(weight):
            return _sharded_embedding_bag(
                input,
                weight,
                offsets,
                max_norm,
                norm_type,
                scale_grad_by_freq,
                mode,
                sparse,
                per_sample_weights,
                include_last_offset,
                padding_idx,
            )
        # Both ONNX exporters trace (jit tracing, or torch.export, where is_compiling() is
        # true): the cheap checks first spare every eager call the import and the lookups of
        # is_in_onnx_export().
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if tracing and torch.onnx.is_in_onnx_export():
            # ONNX has no mybag operator: trace the same forward in ops it has.
            return embedding_bag_for_export(
                input,
                weight,
                offsets,
                max_norm,
                norm_type,
                mode,
                per_sample_weights,
                include_last_offset,
                padding_idx,
            )
    return torch.ops.mybag.embedding_bag(
        input,
        weight,
        offsets,
        max_norm,
        norm_type,
        scale_grad_by_freq,
        mode,
        sparse,
        per_sample_weights,
        include_last_offset,
        padding_idx,
    )

