"""shard_embedding_bags: a model's embedding bags given sharded (DTensor) tables."""

from typing import List, Optional

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Shard, distribute_tensor

from mybag.distributed._layout import PLACEMENTS, shard_rows


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
    left as they are.

    A table larger than one machine is never built whole: build the model on the meta device
    (``with torch.device("meta"):``), and each rank draws its own part of each table here, as
    the modules draw theirs (N(0, 1), a zero padding row) but from a generator seeded by
    ``torch.initial_seed()`` and the part's first row or column, and makes the optimizer
    state of a ``FusedEmbeddingBag``; the other modules are then materialized as usual
    (``to_empty`` and their own initialization, on them alone: ``to_empty`` on the whole
    model would empty the tables too).

    Works in place and returns the model (or the replacement, if ``model`` is itself a
    ``torch.nn.EmbeddingBag``). Every rank must call it, in the same order.

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
    for module in modules:
        if isinstance(module.weight, DTensor):
            continue
        weight = module.weight
        module.weight = nn.Parameter(_sharded(weight.detach(), mesh, PLACEMENTS[placement],
                                              _drawn_table(module.padding_idx)),
                                     requires_grad=weight.requires_grad)
        if isinstance(module, FusedEmbeddingBag):
            # The optimizer state lies like the table (a row-wise sum (E,) by its rows).
            fills = {"sum": module.initial_accumulator_value, "exp_avg": 0.0, "exp_avg_sq": 0.0}
            for name, fill in fills.items():
                buffer = module._buffers[name]
                if buffer is not None:
                    module._buffers[name] = _sharded(buffer, mesh, PLACEMENTS[placement],
                                                     _filled(fill))
            if module.step.is_meta:
                module.step = torch.zeros((), dtype=torch.int64, device=mesh.device_type)
    return model


def _sharded(tensor: Tensor, mesh: DeviceMesh, placement: Placement, make) -> DTensor:
    """``tensor`` placed on ``mesh``: scattered from rank 0 (``distribute_tensor``), or, for a
    tensor on the meta device, this rank's part alone, ``make(shape, dtype, rows)`` (rows: the
    whole tensor's rows that the part holds), so that the whole is never materialized."""
    if not tensor.is_meta:
        return distribute_tensor(tensor, mesh, [placement])
    shape, rows = list(tensor.shape), range(tensor.shape[0])
    if isinstance(placement, Shard):
        first, count = shard_rows(shape[placement.dim], mesh.size(), mesh.get_local_rank())
        shape[placement.dim] = count
        if placement.dim == 0:
            rows = range(first, first + count)
        # Parts of a column-wise table differ by their first column.
        seed_offset = first + 1
    else:
        seed_offset = 0
    local = make(shape, tensor.dtype, rows, seed_offset).to(mesh.device_type)
    return DTensor.from_local(local, mesh, [placement], run_check=False, shape=tensor.shape,
                              stride=tensor.stride())


def _drawn_table(padding_idx: Optional[int]):
    """Parts of a new table drawn as the modules draw theirs (N(0, 1), a zero padding row),
    from a generator seeded by torch's seed and the part's first row or column: the same on
    every run and, for a replicated table, on every rank (not the table that one process
    would draw)."""

    def make(shape, dtype, rows, seed_offset):
        generator = torch.Generator().manual_seed(torch.initial_seed() + seed_offset)
        part = torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype)
        if padding_idx is not None and padding_idx in rows:
            part[padding_idx - rows.start] = 0
        return part

    return make


def _filled(value: float):
    def make(shape, dtype, rows, seed_offset):
        return torch.full(shape, value, dtype=dtype)

    return make
