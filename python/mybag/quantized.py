"""Row-wise quantized embedding bags for serving: ``mybag.QuantizedEmbeddingBag`` and the
functional ``mybag.quantized_embedding_bag``, over 8- or 4-bit tables in torch's own packed
layouts, so a table packed by ``torch.ops.quantized.embedding_bag_byte_prepack`` or
``embedding_bag_4bit_prepack`` works unchanged (docs/spec.md §9).

A packed table is a ``uint8`` tensor ``(num_embeddings, packed columns)``; each row holds its
values, then its scale and bias:

- ``bits=8``: ``D`` bytes, then float32 scale and bias (``D + 8`` bytes);
- ``bits=4``: ``D / 2`` bytes, two values a byte (the even column in the low nibble), then
  float16 scale and bias (``D / 2 + 4`` bytes); ``D`` is even.

The dequantized value of ``q`` is ``q * scale + bias``.
"""

from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor, nn

from mybag.modules import _normalize_padding_idx

__all__ = [
    "QuantizedEmbeddingBag",
    "dequantize_rowwise",
    "quantize_rowwise",
    "quantized_embedding_bag",
]

BITS = (8, 4)


def quantize_rowwise(weight: Tensor, bits: int = 8) -> Tensor:
    """Packs a float32, float16 or bfloat16 table ``(num_embeddings, embedding_dim)`` into the
    ``bits``-bit row-wise layout, on ``weight``'s device. The values, scales and biases are
    torch's: the result equals ``torch.ops.quantized.embedding_bag_byte_prepack(weight)``
    (``bits=8``) or ``embedding_bag_4bit_prepack(weight)`` (``bits=4``, ``embedding_dim`` even)
    byte for byte (a bfloat16 table is packed as its float32 values)."""
    return torch.ops.mybag.quantize_rowwise(weight, bits)


def dequantize_rowwise(packed_weight: Tensor, bits: int = 8) -> Tensor:
    """The float32 table ``(num_embeddings, D)`` a packed table stands for: ``q * scale + bias``
    for every value, rounded once (as max mode compares them)."""
    if bits not in BITS:
        raise ValueError(f"dequantize_rowwise: bits has to be 8 or 4, but got {bits}")
    if packed_weight.dtype != torch.uint8 or packed_weight.dim() != 2:
        raise ValueError(
            "dequantize_rowwise: packed_weight has to be a 2-D uint8 tensor, but got "
            f"{packed_weight.dtype} of shape {tuple(packed_weight.shape)}"
        )
    packed = packed_weight.contiguous()
    rows = packed.shape[0]
    if bits == 8:
        dim = packed.shape[1] - 8
        q = packed[:, :dim]
        scale_bias = packed[:, dim:].contiguous().view(torch.float32)
    else:
        dim = (packed.shape[1] - 4) * 2
        q = torch.stack((packed[:, : dim // 2] & 0x0F, packed[:, : dim // 2] >> 4), dim=2)
        q = q.reshape(rows, dim)
        scale_bias = packed[:, dim // 2 :].contiguous().view(torch.float16).float()
    scale, bias = scale_bias[:, :1], scale_bias[:, 1:]
    # q * scale is exact in float64 (a value of 8 bits times a float32); adding bias there and
    # rounding to float32 rounds the whole expression once, as the kernels' fma does (a tie
    # broken differently by the two roundings needs bias 2^29 times smaller than q * scale).
    return (q.double() * scale.double() + bias.double()).float()


def quantized_embedding_bag(
    input: Tensor,
    packed_weight: Tensor,
    bits: int,
    offsets: Optional[Tensor] = None,
    mode: str = "mean",
    per_sample_weights: Optional[Tensor] = None,
    include_last_offset: bool = False,
    padding_idx: Optional[int] = None,
    output_dtype: Optional[torch.dtype] = None,
) -> Tensor:
    r""":func:`torch.nn.functional.embedding_bag` over the dequantized rows of a packed table.

    Each bag is reduced in float32 and rounded once to ``output_dtype`` (float32 when None;
    float16 and bfloat16 allowed). In ``"sum"`` and ``"mean"`` every entry adds
    ``fma(scale * w, q, acc + bias * w)`` per column (``w`` its per-sample weight, 1 without),
    FBGEMM's order, so sums equal torch's quantized ops bit for bit; ``"mean"`` then divides by
    the bag's non-padding count; ``"max"`` compares ``fma(scale, q, bias)``. Empty bags give
    zeros.

    Args:
        input, offsets, mode, per_sample_weights, include_last_offset, padding_idx: as for
            :func:`mybag.embedding_bag`; ``per_sample_weights`` (``"sum"`` only) is float32,
            float16 or bfloat16.
        packed_weight (Tensor): the packed table (:func:`quantize_rowwise`, or torch's prepack
            ops).
        bits (int): 8 or 4, the table's layout.
        output_dtype (torch.dtype, optional): the result's dtype.

    There is no backward: ``per_sample_weights`` that require grad are refused (a
    ``RuntimeError``) unless grad mode is off. Bad arguments raise as :func:`mybag.embedding_bag`
    does, and ``ValueError`` / ``RuntimeError`` for a ``packed_weight`` or ``bits`` that do not
    fit.
    """
    return torch.ops.mybag.quantized_embedding_bag(
        input,
        packed_weight,
        bits,
        offsets,
        mode,
        per_sample_weights,
        include_last_offset,
        padding_idx,
        output_dtype,
    )


def _renormed(weight: Tensor, max_norm: float, norm_type: float) -> Tensor:
    """Every row of ``weight`` renormalized as a lookup with ``max_norm`` would leave it."""
    weight = weight.detach().clone()
    indices = torch.arange(weight.shape[0], device=weight.device)
    with torch.no_grad():
        torch.ops.mybag._embedding_bag_renorm_(weight, indices, indices[:1] * 0, False,
                                               max_norm, norm_type)
    return weight


class QuantizedEmbeddingBag(nn.Module):
    r"""An embedding bag over a row-wise quantized table, for inference: the forward of
    :class:`torch.nn.EmbeddingBag` (``forward(input, offsets=None, per_sample_weights=None)``)
    computed by :func:`quantized_embedding_bag`.

    Args:
        num_embeddings (int): rows of the table.
        embedding_dim (int): values per row (even for ``bits=4``).
        bits (int): 8 or 4.
        mode, include_last_offset, padding_idx: as for :class:`mybag.EmbeddingBag`
            (``padding_idx`` stored non-negative).
        output_dtype (torch.dtype): float32 (default), float16 or bfloat16.
        device: where the table lives.

    The table is the buffer ``packed_weight`` (``uint8``), initialized by quantizing rows drawn
    from N(0, 1) as :class:`torch.nn.EmbeddingBag` draws them; build a useful one with
    :meth:`from_float` or :meth:`from_torch`. ``state_dict()`` holds ``packed_weight`` and, as
    extra state, ``bits`` and ``embedding_dim``, which loading checks.
    """

    __constants__ = ["num_embeddings", "embedding_dim", "bits", "mode", "include_last_offset"]

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        bits: int = 8,
        mode: str = "mean",
        include_last_offset: bool = False,
        padding_idx: Optional[int] = None,
        output_dtype: torch.dtype = torch.float32,
        device: Optional[Union[torch.device, str]] = None,
    ) -> None:
        super().__init__()
        if bits not in BITS:
            raise ValueError(f"QuantizedEmbeddingBag: bits has to be 8 or 4, but got {bits}")
        if mode not in ("sum", "mean", "max"):
            raise ValueError(
                f"QuantizedEmbeddingBag: mode has to be 'sum', 'mean' or 'max', but got '{mode}'"
            )
        if output_dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(
                "QuantizedEmbeddingBag: output_dtype has to be torch.float32, torch.float16 or "
                f"torch.bfloat16, but got {output_dtype}"
            )
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.bits = bits
        self.mode = mode
        self.include_last_offset = include_last_offset
        self.padding_idx = _normalize_padding_idx(padding_idx, num_embeddings)
        self.output_dtype = output_dtype
        weight = torch.randn(num_embeddings, embedding_dim, device=device)
        if self.padding_idx is not None:
            weight[self.padding_idx].zero_()
        self.register_buffer("packed_weight", quantize_rowwise(weight, bits))

    def forward(
        self,
        input: Tensor,
        offsets: Optional[Tensor] = None,
        per_sample_weights: Optional[Tensor] = None,
    ) -> Tensor:
        return torch.ops.mybag.quantized_embedding_bag(
            input,
            self.packed_weight,
            self.bits,
            offsets,
            self.mode,
            per_sample_weights,
            self.include_last_offset,
            self.padding_idx,
            self.output_dtype,
        )

    def dequantize(self) -> Tensor:
        """The float32 table the packed one stands for (:func:`dequantize_rowwise`)."""
        return dequantize_rowwise(self.packed_weight, self.bits)

    @classmethod
    def from_float(
        cls,
        module_or_weight: Union[nn.EmbeddingBag, Tensor],
        bits: int = 8,
        *,
        mode: Optional[str] = None,
        include_last_offset: Optional[bool] = None,
        padding_idx: Optional[int] = None,
        output_dtype: Optional[torch.dtype] = None,
    ) -> "QuantizedEmbeddingBag":
        """Quantizes an :class:`torch.nn.EmbeddingBag` (or :class:`mybag.EmbeddingBag`) or a 2-D
        float table, with :func:`quantize_rowwise`. A module's ``mode``,
        ``include_last_offset`` and ``padding_idx`` are kept unless given here; a bare table
        takes the constructor's defaults. A module's ``max_norm`` is applied to every row
        before quantizing (a lookup renormalizes each row it reads the same way, so the outputs
        are those the float module gives, up to quantization); ``scale_grad_by_freq`` and
        ``sparse`` concern training and are dropped."""
        if isinstance(module_or_weight, nn.EmbeddingBag):
            module = module_or_weight
            weight = module.weight.detach()
            if module.max_norm is not None:
                weight = _renormed(weight, module.max_norm, module.norm_type)
            options: Dict[str, Any] = {
                "mode": module.mode,
                "include_last_offset": module.include_last_offset,
                "padding_idx": module.padding_idx,
            }
        elif isinstance(module_or_weight, Tensor):
            weight = module_or_weight.detach()
            if weight.dim() != 2:
                raise ValueError(
                    "QuantizedEmbeddingBag.from_float: a table has to be 2-D (num_embeddings, "
                    f"embedding_dim), but got shape {tuple(weight.shape)}"
                )
            options = {"mode": "mean", "include_last_offset": False, "padding_idx": None}
        else:
            raise TypeError(
                "QuantizedEmbeddingBag.from_float: expected a torch.nn.EmbeddingBag, a "
                f"mybag.EmbeddingBag or a 2-D tensor, but got {type(module_or_weight).__name__}"
            )
        for name, value in (("mode", mode), ("include_last_offset", include_last_offset),
                            ("padding_idx", padding_idx)):  # fmt: skip
            if value is not None:
                options[name] = value
        packed = quantize_rowwise(weight, bits)
        return cls._wrap(packed, bits, weight.shape[1], options, output_dtype)

    @classmethod
    def from_torch(cls, module: nn.Module) -> "QuantizedEmbeddingBag":
        """Takes over a ``torch.ao.nn.quantized.EmbeddingBag`` (``torch.quint8`` or
        ``torch.quint4x2``) exactly: its quantized values, scales and biases (``bias = -scale *
        zero_point``, as torch packs them) become the packed table, so sums equal the torch
        module's. Its ``mode`` and ``include_last_offset`` are kept; where torch's module
        ignores ``mode`` (it always sums), this module computes it."""
        from torch.ao.nn.quantized import EmbeddingBag as TorchQuantizedEmbeddingBag

        if not isinstance(module, TorchQuantizedEmbeddingBag):
            raise TypeError(
                "QuantizedEmbeddingBag.from_torch: expected a torch.ao.nn.quantized.EmbeddingBag, "
                f"but got {type(module).__name__}"
            )
        if module.pruned_weights:
            raise ValueError(
                "QuantizedEmbeddingBag.from_torch: pruned tables (pruned_weights=True) are not "
                "supported"
            )
        qweight = module.weight()
        rows, dim = module.num_embeddings, module.embedding_dim
        scale = qweight.q_per_channel_scales().to(torch.float32)
        bias = qweight.q_per_channel_zero_points().to(torch.float32) * scale * -1
        if qweight.dtype == torch.quint8:
            bits, values, scale_bias = 8, qweight.int_repr(), torch.stack((scale, bias), 1)
        elif qweight.dtype == torch.quint4x2:
            bits = 4
            values = qweight.int_repr().reshape(rows, dim // 2)
            scale_bias = torch.stack((scale, bias), 1).to(torch.float16)
        else:
            raise ValueError(
                "QuantizedEmbeddingBag.from_torch: expected a torch.quint8 or torch.quint4x2 "
                f"table, but got {qweight.dtype}"
            )
        packed = torch.cat((values, scale_bias.contiguous().view(torch.uint8)), dim=1)
        options = {"mode": module.mode, "include_last_offset": module.include_last_offset,
                   "padding_idx": None}  # fmt: skip
        return cls._wrap(packed, bits, dim, options, None)

    @classmethod
    def _wrap(cls, packed: Tensor, bits: int, dim: int, options: Dict[str, Any],
              output_dtype: Optional[torch.dtype]) -> "QuantizedEmbeddingBag":  # fmt: skip
        """A module around an already packed table (no random initialization)."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.num_embeddings = packed.shape[0]
        module.embedding_dim = dim
        module.bits = bits
        module.mode = options["mode"]
        module.include_last_offset = options["include_last_offset"]
        module.padding_idx = _normalize_padding_idx(options["padding_idx"], packed.shape[0])
        module.output_dtype = output_dtype if output_dtype is not None else torch.float32
        module.register_buffer("packed_weight", packed)
        return module

    def get_extra_state(self) -> Dict[str, int]:
        return {"bits": self.bits, "embedding_dim": self.embedding_dim}

    def set_extra_state(self, state: Dict[str, int]) -> None:
        if state.get("bits") != self.bits or state.get("embedding_dim") != self.embedding_dim:
            raise RuntimeError(
                f"QuantizedEmbeddingBag: the state holds a {state.get('bits')}-bit table of "
                f"embedding_dim {state.get('embedding_dim')}, but this module has a "
                f"{self.bits}-bit table of embedding_dim {self.embedding_dim}"
            )

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, mode='{self.mode}'"
        if self.include_last_offset:
            s += ", include_last_offset=True"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        if self.output_dtype != torch.float32:
            s += f", output_dtype={self.output_dtype}"
        return s
