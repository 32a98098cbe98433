"""``mybag.EmbeddingBag``: a drop-in for :class:`torch.nn.EmbeddingBag`, and a helper that swaps
it into an existing model.

The module keeps torch's constructor, attributes and ``state_dict`` (one parameter, ``weight``),
so checkpoints move between the two unchanged; its ``repr`` has torch's fields under the name
``mybag.EmbeddingBag``, so a swapped model shows that it was swapped.

Why a subclass of ``torch.nn.EmbeddingBag``: third-party code recognizes embedding bags with
``isinstance(module, nn.EmbeddingBag)``, and some of it breaks on anything else. The case that
forced the decision is DistributedDataParallel, which lets only instances of ``nn.Embedding``
and ``nn.EmbeddingBag`` produce sparse gradients: as a plain ``nn.Module``, ``sparse=True``
failed inside DDP ("Cannot access storage of SparseTensorImpl"). Only ``forward`` (mybag's
operator), the constructor's argument checks (``ValueError`` where torch asserts),
``from_pretrained``'s check and the ``repr`` name are overridden.

What the subclass changes for torch's tools that special-case ``nn.EmbeddingBag`` (tested in
tests/frontends/test_torch_tools.py, test_ddp.py and test_fsdp.py; torchrec only read):

- DDP (``isinstance``): sparse gradients are recognized and all-reduced, as for torch's module.
- ``torch.ao.quantization`` (``quantize_dynamic``, ``prepare_qat``, ``convert``):
  they look modules up by exact ``type(module)`` in their qconfig and mapping dicts, so a
  mybag module is left as it is, in float, running mybag's kernel; even a mapping entry for
  it fails, since ``nnq.EmbeddingBag.from_float`` accepts only the exact type. To quantize,
  quantize torch's module and do not swap it (``swap_embedding_bags`` leaves quantized
  modules alone).
- FSDP: ``ModuleWrapPolicy({nn.EmbeddingBag})`` matches with ``isinstance`` and so gives
  mybag's module its own unit, as torch's; ``ignored_modules`` takes instances and does not
  look at classes; ``fully_shard`` trains it like torch's module (tests/frontends/test_fsdp.py).
- torchrec (read from its source; not installed here): ``DistributedModelParallel`` looks its
  sharders up by exact ``type(module)``, so a mybag module is not sharded; it stays
  data-parallel under the DDP wrapper, which handles its sparse gradients.
- ``torch.fx.symbolic_trace``: torch's module is a leaf because it lives in ``torch.nn``;
  mybag's is traced through, so the graph holds the ``mybag::embedding_bag`` call itself.
- ``swap_embedding_bags`` (below) and other swappers that compare ``type(module) is
  nn.EmbeddingBag`` never replace a mybag module; swappers that use ``isinstance`` (as some
  sharding and inference tools do) will treat it as torch's module and replace it, with its
  options and weight, by their own kernel: the same outcome as for torch's module.
"""

from typing import Dict, Optional

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


class EmbeddingBag(nn.EmbeddingBag):
    r"""Sums, averages or takes the maximum of bags of embeddings, computed by
    ``torch.ops.mybag.embedding_bag``.

    A subclass of :class:`torch.nn.EmbeddingBag` with the same constructor, attributes,
    ``reset_parameters``, ``state_dict`` and ``repr`` fields (``repr`` names the class
    ``mybag.EmbeddingBag``); ``forward`` runs mybag's operator. See :func:`mybag.embedding_bag`
    for the options and for where mybag is stricter than torch (decreasing offsets are
    rejected, a NaN in ``max`` mode always propagates, ``sparse`` works with
    ``scale_grad_by_freq``, a failed call never renormalizes).

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
        # torch's constructor asserts on these; check first so the user gets a ValueError.
        _normalize_padding_idx(padding_idx, num_embeddings)
        if _weight is not None and list(_weight.shape) != [num_embeddings, embedding_dim]:
            raise ValueError(
                f"EmbeddingBag: _weight has shape {tuple(_weight.shape)}; expected "
                f"(num_embeddings, embedding_dim) = ({num_embeddings}, {embedding_dim})"
            )
        super().__init__(
            num_embeddings,
            embedding_dim,
            max_norm=max_norm,
            norm_type=norm_type,
            scale_grad_by_freq=scale_grad_by_freq,
            mode=mode,
            sparse=sparse,
            _weight=_weight,
            include_last_offset=include_last_offset,
            padding_idx=padding_idx,
            device=device,
            dtype=dtype,
        )

    def _get_name(self) -> str:
        # repr keeps torch's fields but says whose module this is: a swapped model must not
        # print exactly like the original.
        return "mybag.EmbeddingBag"

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
