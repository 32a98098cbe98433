"""Embedding bags whose table is a :class:`~torch.distributed.tensor.DTensor`: row-wise
(``Shard(0)``), column-wise (``Shard(1)``) or replicated over a 1-D ``DeviceMesh``.

Every rank sees the whole batch (plain tensors, the same on every rank, or DTensors, which are
gathered first) and gets the whole ``(B, D)`` result, equal to one process's on the same batch
up to the order of the additions; the rest of the model needs no change. What each placement
computes and sends per call (``docs/distributed.md`` has the sizes):

- ``Shard(0)``, row-wise (``_row.py``): each rank holds rows ``[first_row, first_row + rows)``
  and reads only those (mybag's ``_embedding_bag_row_shard_*`` ops: the unsharded kernels on
  the rank's entries). ``"sum"`` and ``"mean"`` add the ranks' parts with one all-reduce of
  ``(B, D)``; ``"max"`` all-gathers each rank's best values and their positions in the batch
  and merges them with the unsharded rules (first of equal values, first NaN). The backward
  sends nothing (the gradient of the output is the same on every rank) except, with
  ``per_sample_weights`` that require grad, one all-reduce of their gradient. The table is
  never gathered.
- ``Shard(1)``, column-wise (``_column.py``): each rank reduces its columns with the unsharded
  op, and one all-gather joins them. ``max_norm`` adds one all-reduce of the referenced rows'
  partial norms, and ``per_sample_weights`` that require grad one all-reduce of their gradient.
- ``Replicate()``: every rank computes the whole result; nothing is sent.

The weight's gradient is a DTensor of the weight's placement (each rank holds its rows' or
columns' gradient), so torch's optimizers train it; a :class:`mybag.FusedEmbeddingBag` steps
its optimizer on each rank's part of the table and state instead. ``sparse=True`` is refused:
DTensor has no sparse layout.
"""

from mybag.distributed._calls import sharded_embedding_bag, sharded_fused_embedding_bag
from mybag.distributed._layout import shard_rows
from mybag.distributed._modules import shard_embedding_bags

__all__ = [
    "shard_embedding_bags",
    "shard_rows",
    "sharded_embedding_bag",
    "sharded_fused_embedding_bag",
]
