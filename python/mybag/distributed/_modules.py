"""shard_embedding_bags: a model's embedding bags given sharded (DTensor) tables."""

from typing import List

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, distribute_tensor

from mybag.distributed._layout import PLACEMENTS


def _refuse(module: nn.Module, placement: str) -> None:
    if getattr(module, "sparse", False):
        raise ValueError(
            f"shard_embedding_bags: {module} has sparse=True; a sharded (DTensor) weight has "
            "no sparse gradient: build it with sparse=False"
        )
    if getattr(module, "optimizer", None) == "rowwise_adagrad" and placement == "column":
        raise ValueError(
            "shard_embedding_bags: a FusedEmbeddingBag with optimizer='rowwise_adagrad' keeps "
            "one state value per row and cannot be sharded by columns; use placement 'row' or "
            "'replicate'"
        )


def shard_embedding_bags(model: nn.Module, mesh: DeviceMesh, placement: str = "row") -> nn.Module:
    """Shards the table of every embedding bag in ``model`` over the 1-D ``mesh``:
    ``placement`` is ``"row"`` (``Shard(0)``), ``"column"`` (``Shard(1)``) or ``"replicate"``.

    ``torch.nn.EmbeddingBag`` modules are first swapped for :class:`mybag.EmbeddingBag`
    (:func:`mybag.swap_embedding_bags`). Each table becomes a new ``nn.Parameter`` holding a
    DTensor with rank 0's values (``distribute_tensor``), so build the optimizer after this
    call; any torch optimizer then trains it, each rank updating its own rows or columns. A
    :class:`mybag.FusedEmbeddingBag`'s optimizer state is sharded like its table (its step
    count stays a plain tensor, the same on every rank). Tables that already are DTensors are
    left as they are. Works in place and returns the model (or the replacement, if ``model``
    is itself a ``torch.nn.EmbeddingBag``). Every rank must call it, in the same order.

    Raises ``ValueError`` for a mesh that is not 1-D, an unknown placement, a module built with
    ``sparse=True`` (DTensor has no sparse gradient), or a ``FusedEmbeddingBag`` with
    ``optimizer="rowwise_adagrad"`` and ``placement="column"``; nothing is changed then.
    """
    from mybag.fused import FusedEmbeddingBag
    from mybag.modules import EmbeddingBag, swap_embedding_bags

    if mesh.ndim != 1:
        raise ValueError(f"shard_embedding_bags: mesh must be 1-D, got shape {tuple(mesh.shape)}")
    if placement not in PLACEMENTS:
        raise ValueError(
            f"shard_embedding_bags: placement={placement!r}; expected one of {sorted(PLACEMENTS)}"
        )
    bags = (nn.EmbeddingBag, FusedEmbeddingBag)
    for module in model.modules():
        if isinstance(module, bags):
            _refuse(module, placement)
    model = swap_embedding_bags(model)
    modules: List[nn.Module] = [
        m for m in model.modules() if isinstance(m, (EmbeddingBag, FusedEmbeddingBag))
    ]
    layout = [PLACEMENTS[placement]]
    for module in modules:
        if isinstance(module.weight, DTensor):
            continue
        weight = module.weight
        module.weight = nn.Parameter(distribute_tensor(weight.detach(), mesh, layout),
                                     requires_grad=weight.requires_grad)
        if isinstance(module, FusedEmbeddingBag):
            # The optimizer state lies like the table (a row-wise sum (E,) by its rows).
            for name in ("sum", "exp_avg", "exp_avg_sq"):
                buffer = module._buffers[name]
                if buffer is not None:
                    module._buffers[name] = distribute_tensor(buffer, mesh, layout)
    return model
