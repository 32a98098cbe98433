"""``mybag.EmbeddingBag``: a drop-in for :class:`torch.nn.EmbeddingBag`, and a helper that swaps
it into an existing model.

The module keeps torch's constructor, attributes, ``repr`` and ``state_dict`` (one parameter,
``weight``), so checkpoints move between the two unchanged. It is a plain ``nn.Module`` rather
than a subclass of ``nn.EmbeddingBag``: code that dispatches on ``isinstance(m,
nn.EmbeddingBag)`` (quantization, sharding planners) must not mistake it for torch's kernel.
"""

from typing import Dict, Optional

import torch
from torch import Tensor, nn

from mybag.functional import embedding_bag

__all__ = ["EmbeddingBag", "swap_embedding_bags"]


def _normalize_padding_idx(padding_idx: Optional[int], num_embeddings: int) -> Optional[int]:
    """Checks ``padding_idx`` against ``[-num_embeddings, num_embeddings)`` and makes it
    non-negative, as torch's constructor does (but with a ValueError, not an assert)."""
    if padding_idx is None:
        return None
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(
            f"EmbeddingBag: padding_idx={padding_idx} is out of range; expected an integer in "
            f"[-num_embeddings, num_embeddings) = [{-num_embeddings}, {num_embeddings})"
        )
    return padding_idx + num_embeddings if padding_idx < 0 else padding_idx


class EmbeddingBag(nn.Module):
    r"""Sums, averages or takes the maximum of bags of embeddings, computed by
    ``torch.ops.mybag.embedding_bag``.

    Same constructor, attributes, ``forward``, ``repr`` and ``state_dict`` as
    :class:`torch.nn.EmbeddingBag`; see :func:`mybag.embedding_bag` for the options and for where
    mybag is stricter than torch (decreasing offsets are rejected, a NaN in ``max`` mode always
    propagates, ``sparse`` works with ``scale_grad_by_freq``, a failed call never renormalizes).

    Args:
        num_embeddings (int): rows of the table.
        embedding_dim (int): size of each row.
        max_norm, norm_type, scale_grad_by_freq, mode, sparse, include_last_offset, padding_idx:
            as for :func:`mybag.embedding_bag`. ``padding_idx`` may be negative and is stored
            as ``num_embeddings + padding_idx``; its row is zero after initialization.
        _weight (Tensor, optional): the initial table, ``(num_embeddings, embedding_dim)``;
            wrapped in a new Parameter without copying.
        device, dtype: of the table when ``_weight`` is not given.

    Attributes:
        weight (Parameter): the table, ``(num_embeddings, embedding_dim)``, initialized from
            N(0, 1).

    Raises:
        ValueError: ``padding_idx`` outside ``[-num_embeddings, num_embeddings)``, or a
            ``_weight`` whose shape is not ``(num_embeddings, embedding_dim)``.
    """

    __constants__ = [
        "num_embeddings",
        "embedding_dim",
        "max_norm",
        "norm_type",
        "scale_grad_by_freq",
        "mode",
        "sparse",
        "include_last_offset",
        "padding_idx",
    ]

    num_embeddings: int
    embedding_dim: int
    max_norm: Optional[float]
    norm_type: float
    scale_grad_by_freq: bool
    weight: Tensor
    mode: str
    sparse: bool
    include_last_offset: bool
    padding_idx: Optional[int]

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        _weight: Optional[Tensor] = None,
        include_last_offset: bool = False,
        padding_idx: Optional[int] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scale_grad_by_freq = scale_grad_by_freq
        self.mode = mode
        self.sparse = sparse
        self.include_last_offset = include_last_offset
        self.padding_idx = _normalize_padding_idx(padding_idx, num_embeddings)
        if _weight is None:
            self.weight = nn.Parameter(
                torch.empty((num_embeddings, embedding_dim), device=device, dtype=dtype)
            )
            self.reset_parameters()
        else:
            if list(_weight.shape) != [num_embeddings, embedding_dim]:
                raise ValueError(
                    f"EmbeddingBag: _weight has shape {tuple(_weight.shape)}; expected "
                    f"(num_embeddings, embedding_dim) = ({num_embeddings}, {embedding_dim})"
                )
            self.weight = nn.Parameter(_weight)

    def reset_parameters(self) -> None:
        """Refills ``weight`` from N(0, 1) (the same random stream as torch's module) and
        zeroes the ``padding_idx`` row."""
        with torch.no_grad():
            self.weight.normal_()
            if self.padding_idx is not None:
                self.weight[self.padding_idx].fill_(0)

    def forward(
        self,
        input: Tensor,
        offsets: Optional[Tensor] = None,
        per_sample_weights: Optional[Tensor] = None,
    ) -> Tensor:
        """Reduces each bag of ``input`` (1-D with ``offsets``, or 2-D ``(B, L)``) to one row:
        returns ``(B, embedding_dim)``. ``per_sample_weights`` (``mode="sum"`` only) has
        ``input``'s shape."""
        return embedding_bag(
            input,
            self.weight,
            offsets,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.mode,
            self.sparse,
            per_sample_weights,
            self.include_last_offset,
            self.padding_idx,
        )

    def extra_repr(self) -> str:
        # Word for word what torch prints, so the two modules' reprs are interchangeable.
        parts = [repr(self.num_embeddings), repr(self.embedding_dim)]
        if self.max_norm is not None:
            parts.append(f"max_norm={self.max_norm!r}")
        if self.norm_type != 2:
            parts.append(f"norm_type={self.norm_type!r}")
        if self.scale_grad_by_freq is not False:
            parts.append(f"scale_grad_by_freq={self.scale_grad_by_freq!r}")
        parts.append(f"mode={self.mode!r}")
        if self.padding_idx is not None:
            parts.append(f"padding_idx={self.padding_idx!r}")
        return ", ".join(parts)

    @classmethod
    def from_pretrained(
        cls,
        embeddings: Tensor,
        freeze: bool = True,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        padding_idx: Optional[int] = None,
    ) -> "EmbeddingBag":
        """Builds the module around a 2-D table ``embeddings`` (no copy: the table becomes the
        data of ``weight``; its ``padding_idx`` row is left as given). ``freeze=True`` sets
        ``weight.requires_grad = False``."""
        if embeddings.dim() != 2:
            raise ValueError(
                f"EmbeddingBag.from_pretrained: embeddings has shape {tuple(embeddings.shape)} "
                f"({embeddings.dim()}-D); expected a 2-D (num_embeddings, embedding_dim) tensor"
            )
        num_embeddings, embedding_dim = embeddings.shape
        module = cls(
            num_embeddings,
            embedding_dim,
            max_norm=max_norm,
            norm_type=norm_type,
            scale_grad_by_freq=scale_grad_by_freq,
            mode=mode,
            sparse=sparse,
            _weight=embeddings,
            include_last_offset=include_last_offset,
            padding_idx=padding_idx,
        )
        module.weight.requires_grad = not freeze
        return module

    @classmethod
    def from_torch(cls, module: nn.EmbeddingBag) -> "EmbeddingBag":
        """Builds a ``mybag.EmbeddingBag`` with ``module``'s options that shares its ``weight``:
        the very same Parameter object, so optimizers and other holders of it see the new
        module's updates. The training flag is copied; hooks are not."""
        if not isinstance(module, nn.EmbeddingBag):
            raise TypeError(
                f"EmbeddingBag.from_torch: expected a torch.nn.EmbeddingBag, got "
                f"{type(module).__module__}.{type(module).__qualname__}"
            )
        weight = module.weight
        replacement = cls(
            module.num_embeddings,
            module.embedding_dim,
            max_norm=module.max_norm,
            norm_type=module.norm_type,
            scale_grad_by_freq=module.scale_grad_by_freq,
            mode=module.mode,
            sparse=module.sparse,
            # Passes the constructor's shape check without allocating; replaced just below.
            _weight=weight.detach(),
            include_last_offset=module.include_last_offset,
            padding_idx=module.padding_idx,
        )
        replacement.weight = weight
        replacement.train(module.training)
        return replacement


def swap_embedding_bags(model: nn.Module) -> nn.Module:
    """Replaces every ``torch.nn.EmbeddingBag`` in ``model`` (at any depth) by a
    :class:`mybag.EmbeddingBag` with the same options and the same ``weight`` Parameter object,
    so an optimizer built before the swap keeps training the model. Works in place and returns
    ``model``; if ``model`` itself is an ``nn.EmbeddingBag``, returns its replacement.

    Only modules whose type is exactly ``torch.nn.EmbeddingBag`` are replaced: subclasses (for
    example quantization-aware ones) may change ``forward`` and are left alone, as are other
    modules and ``mybag.EmbeddingBag`` instances. A module reachable from several places is
    replaced by one shared replacement. Hooks registered on a replaced module are not carried
    over.
    """
    replacements: Dict[int, EmbeddingBag] = {}

    def replacement_for(module: nn.Module) -> nn.Module:
        if type(module) is not nn.EmbeddingBag:
            return module
        if id(module) not in replacements:
            replacements[id(module)] = EmbeddingBag.from_torch(module)
        return replacements[id(module)]

    visited = set()

    def swap_children(parent: nn.Module) -> None:
        if id(parent) in visited:
            return
        visited.add(id(parent))
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            new_child = replacement_for(child)
            if new_child is not child:
                setattr(parent, name, new_child)
            else:
                swap_children(child)

    root = replacement_for(model)
    if root is not model:
        return root
    swap_children(model)
    return model
