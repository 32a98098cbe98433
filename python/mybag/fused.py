"""``mybag.FusedEmbeddingBag``: an embedding bag that trains its own table. The backward pass
applies the optimizer to the rows the batch touched, in the same pass that forms their
gradients, so the table's gradient is never built and no torch optimizer steps the table.

The optimizers (``"sgd"``, ``"adagrad"``, ``"rowwise_adagrad"``, ``"adam"``) and their exact
arithmetic are the contract of docs/spec.md §8; the operator is
``torch.ops.mybag.fused_embedding_bag``.
"""

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from mybag.functional import _is_dtensor
from mybag.modules import EmbeddingBag, _normalize_padding_idx

__all__ = ["FusedEmbeddingBag", "fused_embedding_bag", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam")

# torch.optim's defaults for each optimizer: lr, eps (SGD has no eps). Row-wise Adagrad takes
# Adagrad's.
_DEFAULT_LR = {"sgd": 1e-3, "adagrad": 1e-2, "rowwise_adagrad": 1e-2, "adam": 1e-3}
_DEFAULT_EPS = {"sgd": 0.0, "adagrad": 1e-10, "rowwise_adagrad": 1e-10, "adam": 1e-8}


def fused_embedding_bag(
    input: Tensor,
    weight: Tensor,
    state: List[Tensor],
    step: Tensor,
    offsets: Optional[Tensor] = None,
    max_norm: Optional[float] = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    mode: str = "mean",
    per_sample_weights: Optional[Tensor] = None,
    include_last_offset: bool = False,
    padding_idx: Optional[int] = None,
    optimizer: str = "sgd",
    lr: float = 1e-3,
    eps: float = 1e-10,
    betas: Tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    lr_decay: float = 0.0,
) -> Tensor:
    r""":func:`mybag.embedding_bag` whose backward updates ``weight`` in place with a fused
    optimizer instead of producing ``weight.grad``.

    The bags are computed as :func:`mybag.embedding_bag` computes them (the same options; no
    ``sparse``). When the result's backward runs, every row named by a non-padding entry of
    ``input`` gets one optimizer step from its whole gradient in this batch, and ``state`` and
    ``step`` are updated with it; ``weight.grad`` is not written. ``per_sample_weights`` that
    require grad get their gradient as usual, from the rows before the step.

    Args:
        state (list of Tensor): the optimizer's state, contiguous, float32 (float64 for a
            float64 ``weight``), on ``weight``'s device: ``[]`` for ``"sgd"``; ``[sum]`` for
            ``"adagrad"`` (``weight``'s shape) and ``"rowwise_adagrad"`` (``(num_embeddings,)``);
            ``[exp_avg, exp_avg_sq]`` (``weight``'s shape) for ``"adam"``.
        step (Tensor): 0-dim int64 on ``weight``'s device: steps taken so far; the backward
            adds one.
        optimizer (str): ``"sgd"``, ``"adagrad"``, ``"rowwise_adagrad"`` or ``"adam"``.
        lr, eps, betas, weight_decay, lr_decay: the optimizer's hyperparameters, as in
            ``torch.optim`` (``betas`` for ``"adam"``, ``lr_decay`` for ``"adagrad"``);
            ``weight_decay`` adds ``weight_decay * row`` to a touched row's gradient.

    The other arguments are :func:`mybag.embedding_bag`'s. Raises what it raises, and
    ``ValueError`` for an unknown ``optimizer`` or a hyperparameter out of range, and
    ``RuntimeError`` for ``state`` or ``step`` that do not fit ``weight``.
    """
    return torch.ops.mybag.fused_embedding_bag(
        input,
        weight,
        state,
        step,
        offsets,
        max_norm,
        norm_type,
        scale_grad_by_freq,
        mode,
        per_sample_weights,
        include_last_offset,
        padding_idx,
        optimizer,
        lr,
        eps,
        betas[0],
        betas[1],
        weight_decay,
        lr_decay,
    )


def _check_optimizer(optimizer: str) -> None:
    if optimizer not in OPTIMIZERS:
        raise ValueError(
            f"FusedEmbeddingBag: optimizer has to be one of {', '.join(map(repr, OPTIMIZERS))}, "
            f"but got {optimizer!r}"
        )


def _check_hyperparameters(
    lr: float, eps: float, betas: Tuple[float, float], weight_decay: float, lr_decay: float,
    initial_accumulator_value: float,
) -> None:
    for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay),
                        ("lr_decay", lr_decay),
                        ("initial_accumulator_value", initial_accumulator_value)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"FusedEmbeddingBag: {name} has to be a finite number >= 0, "
                             f"but got {value}")
    if len(betas) != 2:
        raise ValueError(f"FusedEmbeddingBag: betas has to be a pair, but got {betas!r}")
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"FusedEmbeddingBag: betas[{i}] has to be in [0, 1), but got {beta}")


class FusedEmbeddingBag(nn.Module):
    r"""An embedding bag trained by its own backward pass: ``loss.backward()`` applies the
    optimizer (``"sgd"``, ``"adagrad"``, ``"rowwise_adagrad"`` or ``"adam"``) to the rows the
    batch touched, in place, and leaves ``weight.grad`` as ``None``. Do not give ``weight`` to a
    torch optimizer; train the rest of the model with one as usual.

    Args:
        num_embeddings, embedding_dim, max_norm, norm_type, scale_grad_by_freq, mode,
        include_last_offset, padding_idx, _weight, device, dtype: as for
            :class:`torch.nn.EmbeddingBag` (there is no ``sparse``: the gradient is never
            built).
        optimizer (str): the update rule; default ``"sgd"``.
        lr (float, optional): learning rate; default torch.optim's for the optimizer
            (``1e-3`` for sgd and adam, ``1e-2`` for adagrad and rowwise_adagrad).
        eps (float, optional): added to the denominators; default torch.optim's
            (``1e-10`` for the Adagrads, ``1e-8`` for adam).
        betas (tuple of float): adam's moment decay rates. Default ``(0.9, 0.999)``.
        weight_decay (float): L2 penalty, added to the gradient of the touched rows only.
        initial_accumulator_value (float): the Adagrads' initial sum of squares.
        lr_decay (float): adagrad's learning rate decay, as in ``torch.optim.Adagrad``.

    Attributes:
        weight (Parameter): the table, ``(num_embeddings, embedding_dim)``.
        step (Tensor): buffer, 0-dim int64: optimizer steps taken.
        sum (Tensor): buffer of the Adagrads: per element ``(E, D)`` for ``"adagrad"``, per
            row ``(E,)`` for ``"rowwise_adagrad"``; float32 (float64 for a float64 table).
        exp_avg, exp_avg_sq (Tensor): adam's moments, ``(E, D)``.
        lr, eps, betas, weight_decay, lr_decay: plain attributes, read by each forward (the
            step its backward takes uses them), so they can be changed between steps, by hand
            or by a schedule.

    ``state_dict()`` holds ``weight``, the step count, the state buffers and (as extra state)
    the optimizer's name and hyperparameters, so loading it resumes training exactly.
    """

    __constants__ = ["num_embeddings", "embedding_dim", "max_norm", "norm_type",
                     "scale_grad_by_freq", "mode", "include_last_offset", "padding_idx",
                     "optimizer"]

    num_embeddings: int
    embedding_dim: int
    max_norm: Optional[float]
    norm_type: float
    scale_grad_by_freq: bool
    mode: str
    include_last_offset: bool
    padding_idx: Optional[int]
    optimizer: str
    lr: float
    eps: float
    betas: Tuple[float, float]
    weight_decay: float
    lr_decay: float
    initial_accumulator_value: float

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        include_last_offset: bool = False,
        padding_idx: Optional[int] = None,
        _weight: Optional[Tensor] = None,
        device=None,
        dtype=None,
        *,
        optimizer: str = "sgd",
        lr: Optional[float] = None,
        eps: Optional[float] = None,
        betas: Tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        lr_decay: float = 0.0,
    ) -> None:
        super().__init__()
        _check_optimizer(optimizer)
        lr = _DEFAULT_LR[optimizer] if lr is None else float(lr)
        eps = _DEFAULT_EPS[optimizer] if eps is None else float(eps)
        betas = (float(betas[0]), float(betas[1])) if len(betas) == 2 else betas
        _check_hyperparameters(lr, eps, betas, weight_decay, lr_decay, initial_accumulator_value)
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"FusedEmbeddingBag: mode has to be 'sum', 'mean' or 'max', "
                             f"but got {mode!r}")
        if mode == "max" and scale_grad_by_freq:
            raise ValueError("FusedEmbeddingBag: mode='max' does not take scale_grad_by_freq=True")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scale_grad_by_freq = scale_grad_by_freq
        self.mode = mode
        self.include_last_offset = include_last_offset
        self.padding_idx = _normalize_padding_idx(padding_idx, num_embeddings)
        self.optimizer = optimizer
        self.lr = lr
        self.eps = eps
        self.betas = betas
        self.weight_decay = float(weight_decay)
        self.lr_decay = float(lr_decay)
        self.initial_accumulator_value = float(initial_accumulator_value)

        if _weight is None:
            self.weight = nn.Parameter(
                torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
            self._reset_weight()
        else:
            if list(_weight.shape) != [num_embeddings, embedding_dim]:
                raise ValueError(
                    f"FusedEmbeddingBag: _weight has shape {tuple(_weight.shape)}; expected "
                    f"(num_embeddings, embedding_dim) = ({num_embeddings}, {embedding_dim})")
            self.weight = nn.Parameter(_weight)
        table = self.weight
        state_options = dict(device=table.device,
                             dtype=torch.float64 if table.dtype == torch.float64 else torch.float32)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64, device=table.device))
        # Every optimizer's buffers exist as attributes (None where unused, and then absent from
        # state_dict), so that TorchScript compiles forward for each of them.
        self.register_buffer("sum", None)
        self.register_buffer("exp_avg", None)
        self.register_buffer("exp_avg_sq", None)
        if optimizer == "adagrad":
            self.sum = torch.empty(num_embeddings, embedding_dim, **state_options)
        elif optimizer == "rowwise_adagrad":
            self.sum = torch.empty(num_embeddings, **state_options)
        elif optimizer == "adam":
            self.exp_avg = torch.empty(num_embeddings, embedding_dim, **state_options)
            self.exp_avg_sq = torch.empty(num_embeddings, embedding_dim, **state_options)
        self.reset_optimizer_state()

    @torch.jit.unused
    def _apply(self, fn, recurse=True):
        # .half(), .double(), .to(dtype) convert every floating buffer, which would give a
        # float16 table float16 state (the op takes float32 state, docs/spec.md §8) and round
        # the state on the way. The state follows the table's device, and its dtype is the one
        # the table's dtype calls for, converted once from the original.
        names = [name for name in ("sum", "exp_avg", "exp_avg_sq") if self._buffers[name] is not None]
        state = {name: self._buffers[name] for name in names}
        for name in names:
            self._buffers[name] = None
        try:
            super()._apply(fn, recurse)
        finally:
            table = self.weight
            dtype = torch.float64 if table.dtype == torch.float64 else torch.float32
            for name, tensor in state.items():
                self._buffers[name] = tensor.to(device=table.device, dtype=dtype)
        return self

    def _reset_weight(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.weight)
            if self.padding_idx is not None:
                self.weight[self.padding_idx].fill_(0)

    def reset_parameters(self) -> None:
        """Draws a new table from N(0, 1) (zero ``padding_idx`` row), as torch's module, and
        resets the optimizer state."""
        self._reset_weight()
        self.reset_optimizer_state()

    @torch.jit.unused
    def reset_optimizer_state(self) -> None:
        """Sets the step count to 0, the Adagrads' sums to ``initial_accumulator_value`` and
        adam's moments to 0."""
        with torch.no_grad():
            self.step.zero_()
            if self.sum is not None:
                self.sum.fill_(self.initial_accumulator_value)
            if self.exp_avg is not None:
                self.exp_avg.zero_()
            if self.exp_avg_sq is not None:
                self.exp_avg_sq.zero_()

    def optimizer_state(self) -> List[Tensor]:
        """The state tensors in the order the operator takes them."""
        state: List[Tensor] = []
        if self.sum is not None:
            state.append(self.sum)
        if self.exp_avg is not None:
            state.append(self.exp_avg)
        if self.exp_avg_sq is not None:
            state.append(self.exp_avg_sq)
        return state

    @torch.jit.unused
    def _sharded_forward(
        self,
        input: Tensor,
        offsets: Optional[Tensor],
        per_sample_weights: Optional[Tensor],
    ) -> Tensor:
        # A DTensor table (mybag.distributed); jit.unused keeps the import out of TorchScript.
        from mybag.distributed import sharded_fused_embedding_bag

        return sharded_fused_embedding_bag(self, input, offsets, per_sample_weights)

    def forward(
        self,
        input: Tensor,
        offsets: Optional[Tensor] = None,
        per_sample_weights: Optional[Tensor] = None,
    ) -> Tensor:
        """Reduces each bag of ``input`` (1-D with ``offsets``, or 2-D ``(B, L)``) to one row:
        returns ``(B, embedding_dim)``. The backward of the result steps the optimizer."""
        if not torch.jit.is_scripting():
            if _is_dtensor(self.weight):
                return self._sharded_forward(input, offsets, per_sample_weights)
        return torch.ops.mybag.fused_embedding_bag(
            input,
            self.weight,
            self.optimizer_state(),
            self.step,
            offsets,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.mode,
            per_sample_weights,
            self.include_last_offset,
            self.padding_idx,
            self.optimizer,
            self.lr,
            self.eps,
            self.betas[0],
            self.betas[1],
            self.weight_decay,
            self.lr_decay,
        )

    def hyperparameters(self) -> Dict[str, Any]:
        """The optimizer's name and hyperparameters, as saved in ``state_dict``."""
        return {
            "optimizer": self.optimizer,
            "lr": self.lr,
            "eps": self.eps,
            "betas": tuple(self.betas),
            "weight_decay": self.weight_decay,
            "lr_decay": self.lr_decay,
            "initial_accumulator_value": self.initial_accumulator_value,
        }

    @torch.jit.unused
    def get_extra_state(self) -> Dict[str, Any]:
        return self.hyperparameters()

    @torch.jit.unused
    def set_extra_state(self, state: Dict[str, Any]) -> None:
        if state.get("optimizer") != self.optimizer:
            raise ValueError(
                f"FusedEmbeddingBag.load_state_dict: the checkpoint was saved with optimizer "
                f"{state.get('optimizer')!r}, but this module uses {self.optimizer!r}")
        betas = tuple(state["betas"])
        _check_hyperparameters(state["lr"], state["eps"], betas, state["weight_decay"],
                               state["lr_decay"], state["initial_accumulator_value"])
        self.lr = float(state["lr"])
        self.eps = float(state["eps"])
        self.betas = (float(betas[0]), float(betas[1]))
        self.weight_decay = float(state["weight_decay"])
        self.lr_decay = float(state["lr_decay"])
        self.initial_accumulator_value = float(state["initial_accumulator_value"])

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm}, norm_type={self.norm_type}"
        if self.scale_grad_by_freq:
            s += ", scale_grad_by_freq=True"
        if self.include_last_offset:
            s += ", include_last_offset=True"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        s += f", optimizer={self.optimizer!r}, lr={self.lr}"
        if self.optimizer != "sgd":
            s += f", eps={self.eps}"
        if self.optimizer == "adam":
            s += f", betas={self.betas}"
        if self.weight_decay:
            s += f", weight_decay={self.weight_decay}"
        if self.lr_decay:
            s += f", lr_decay={self.lr_decay}"
        return s

    @classmethod
    def from_embedding_bag(cls, module: nn.EmbeddingBag, optimizer: str = "sgd",
                           **hyperparameters: Any) -> "FusedEmbeddingBag":
        """A ``FusedEmbeddingBag`` with the options of ``module`` (a ``torch.nn.EmbeddingBag``
        or :class:`mybag.EmbeddingBag`) and a copy of its table, on its device and in its
        dtype, trained by ``optimizer`` with ``hyperparameters`` (the constructor's keywords).
        ``module.sparse`` has no counterpart and is ignored. The training flag is copied."""
        if not isinstance(module, (nn.EmbeddingBag, EmbeddingBag)):
            raise TypeError(
                f"FusedEmbeddingBag.from_embedding_bag: expected a torch.nn.EmbeddingBag or "
                f"mybag.EmbeddingBag, got {type(module).__module__}.{type(module).__qualname__}")
        fused = cls(
            module.num_embeddings,
            module.embedding_dim,
            max_norm=module.max_norm,
            norm_type=module.norm_type,
            scale_grad_by_freq=module.scale_grad_by_freq,
            mode=module.mode,
            include_last_offset=module.include_last_offset,
            padding_idx=module.padding_idx,
            _weight=module.weight.detach().clone(),
            optimizer=optimizer,
            **hyperparameters,
        )
        fused.train(module.training)
        return fused
