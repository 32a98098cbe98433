"""Writes the TorchScript models and the expected values that tests/frontends/cpp/test_torchscript.cpp
checks from C++ with no Python (docs/spec.md §7).

    python tests/frontends/cpp/make_scripted_model.py OUTDIR

OUTDIR/model.pt         a scripted model: mybag.EmbeddingBag(mode="sum", padding_idx) + Linear
OUTDIR/max_model.pt     a scripted model around mybag.EmbeddingBag(mode="max", include_last_offset)
OUTDIR/op_module.pt     a scripted module calling torch.ops.mybag.embedding_bag directly
                        (mode="sum", 2-D input, per_sample_weights, max_norm: renormalizes)
OUTDIR/op_function.pt   a scripted function calling torch.ops.mybag.embedding_bag with keywords
                        (mode="mean", negative padding_idx), saved as a module
OUTDIR/expected.pt      a scripted module whose buffers hold the inputs and the expected values
                        (C++: torch::jit::load(path).attr(name).toTensor())

The expected values come from running the saved files, loaded back, in Python (the same path C++
takes); each is also checked here against torch.nn / torch.nn.functional, so a wrong expected
value cannot slip in unnoticed.
"""

import copy
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

import mybag

# TorchScript is deprecated upstream and says so on every call.
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated",
                        category=FutureWarning)

NUM_EMBEDDINGS = 10
DIM = 4
OUT_FEATURES = 3
PADDING_IDX = 2
TRAIN_STEPS = 3
LR = 0.1


class Model(torch.nn.Module):
    """A bag of embeddings, summed, then a linear layer."""

    def __init__(self, bag: torch.nn.Module):
        super().__init__()
        self.bag = bag
        self.linear = torch.nn.Linear(DIM, OUT_FEATURES)

    def forward(self, input: Tensor, offsets: Tensor) -> Tensor:
        return self.linear(self.bag(input, offsets))


class MaxModel(torch.nn.Module):
    def __init__(self, bag: torch.nn.Module):
        super().__init__()
        self.bag = bag

    def forward(self, input: Tensor, offsets: Tensor) -> Tensor:
        return torch.tanh(self.bag(input, offsets))


class OpModule(torch.nn.Module):
    """Calls the operator itself, positionally, with its own weight."""

    max_norm: Optional[float]
    padding_idx: Optional[int]

    def __init__(self, weight: Tensor, max_norm: Optional[float], padding_idx: Optional[int]):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)
        self.max_norm = max_norm
        self.padding_idx = padding_idx

    def forward(self, input: Tensor, per_sample_weights: Optional[Tensor]) -> Tensor:
        return torch.ops.mybag.embedding_bag(input, self.weight, None, self.max_norm, 2.0, False,
                                             "sum", False, per_sample_weights, False,
                                             self.padding_idx)


@torch.jit.script
def op_function(input: Tensor, weight: Tensor, offsets: Tensor) -> Tensor:
    return torch.ops.mybag.embedding_bag(input, weight, offsets, mode="mean", padding_idx=-1)


class Expected(torch.nn.Module):
    """Only a holder of named tensors (buffers), saved as TorchScript so C++ can read them."""

    def __init__(self, tensors):
        super().__init__()
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor.detach().clone().contiguous())

    def forward(self) -> int:
        return 0


def close(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6,
                               msg=lambda m: f"make_scripted_model: {what}: {m}")


def sgd_train(model, input, offsets, target):
    """K SGD steps of the MSE loss; the loss the C++ test uses too."""
    sgd = torch.optim.SGD(model.parameters(), lr=LR)
    for _ in range(TRAIN_STEPS):
        sgd.zero_grad()
        F.mse_loss(model(input, offsets), target).backward()
        sgd.step()


def main(outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    tensors = {}

    # -- model.pt: mybag.EmbeddingBag(mode="sum", padding_idx) + Linear, forward and training.
    torch.manual_seed(0)
    model = Model(mybag.EmbeddingBag(NUM_EMBEDDINGS, DIM, mode="sum", padding_idx=PADDING_IDX))
    reference = Model(torch.nn.EmbeddingBag(NUM_EMBEDDINGS, DIM, mode="sum",
                                            padding_idx=PADDING_IDX))
    reference.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(1)
    input = torch.randint(0, NUM_EMBEDDINGS, (12,), generator=gen)
    input[[0, 7]] = PADDING_IDX
    offsets = torch.tensor([0, 3, 3, 8])  # bag 1 is empty
    target = torch.randn(4, OUT_FEATURES, generator=gen)
    torch.jit.save(torch.jit.script(model), str(outdir / "model.pt"))

    loaded = torch.jit.load(str(outdir / "model.pt"))
    output = loaded(input, offsets).detach()
    close(output, reference(input, offsets).detach(), "model output vs torch.nn.EmbeddingBag")
    # The weight gradient of one backward, from the initial weights.
    F.mse_loss(loaded(input, offsets), target).backward()
    bag_weight_grad = loaded.bag.weight.grad.detach().clone()
    loaded.zero_grad()
    # Training: on the loaded scripted model (what C++ trains) and on torch's model.
    sgd_train(loaded, input, offsets, target)
    trained_reference = copy.deepcopy(reference)
    sgd_train(trained_reference, input, offsets, target)
    trained = dict(loaded.named_parameters())
    for name, parameter in trained_reference.named_parameters():
        close(trained[name], parameter, f"trained {name} vs torch")
    assert not torch.equal(trained["bag.weight"], model.bag.weight), "training changed nothing"
    tensors.update(
        input=input, offsets=offsets, target=target, output=output,
        bag_weight_grad=bag_weight_grad,
        trained_bag_weight=trained["bag.weight"], trained_linear_weight=trained["linear.weight"],
        trained_linear_bias=trained["linear.bias"],
        lr=torch.tensor(LR, dtype=torch.float64), steps=torch.tensor(TRAIN_STEPS),
    )

    # -- max_model.pt: mode="max", include_last_offset=True (offsets[-1] == N), int32 indices.
    torch.manual_seed(2)
    max_model = MaxModel(mybag.EmbeddingBag(7, 5, mode="max", include_last_offset=True))
    gen = torch.Generator().manual_seed(3)
    max_input = torch.randint(0, 7, (9,), generator=gen, dtype=torch.int32)
    max_offsets = torch.tensor([0, 2, 2, 6, 9], dtype=torch.int32)
    max_grad_out = torch.randn(4, 5, generator=gen)
    torch.jit.save(torch.jit.script(max_model), str(outdir / "max_model.pt"))
    loaded = torch.jit.load(str(outdir / "max_model.pt"))
    max_output = loaded(max_input, max_offsets)
    max_output.backward(max_grad_out)
    weight = max_model.bag.weight.detach()
    ref_output = torch.tanh(F.embedding_bag(max_input.long(), weight, max_offsets.long(),
                                            mode="max", include_last_offset=True))
    close(max_output.detach(), ref_output, "max model output vs F.embedding_bag")
    w = weight.clone().requires_grad_()
    torch.tanh(F.embedding_bag(max_input.long(), w, max_offsets.long(), mode="max",
                               include_last_offset=True)).backward(max_grad_out)
    close(loaded.bag.weight.grad, w.grad, "max model weight grad vs F.embedding_bag")
    tensors.update(max_input=max_input, max_offsets=max_offsets, max_grad_out=max_grad_out,
                   max_output=max_output.detach(), max_weight_grad=loaded.bag.weight.grad)

    # -- op_module.pt: torch.ops.mybag.embedding_bag, 2-D input, per_sample_weights, max_norm.
    gen = torch.Generator().manual_seed(4)
    op_weight = torch.randn(NUM_EMBEDDINGS, DIM, generator=gen) * 2
    op_input = torch.randint(0, NUM_EMBEDDINGS, (3, 4), generator=gen)
    op_input[1, 2] = 5
    op_psw = torch.rand(3, 4, generator=gen)
    op_grad_out = torch.randn(3, DIM, generator=gen)
    scripted = torch.jit.script(OpModule(op_weight.clone(), max_norm=1.5, padding_idx=5))
    assert "mybag::embedding_bag" in str(scripted.graph)
    torch.jit.save(scripted, str(outdir / "op_module.pt"))
    loaded = torch.jit.load(str(outdir / "op_module.pt"))
    psw = op_psw.clone().requires_grad_()
    op_output = loaded(op_input, psw)
    op_output.backward(op_grad_out)
    w = op_weight.clone().requires_grad_()
    p = op_psw.clone().requires_grad_()
    F.embedding_bag(op_input, w, max_norm=1.5, mode="sum", per_sample_weights=p,
                    padding_idx=5).backward(op_grad_out)
    close(loaded.weight.detach(), w.detach(), "op module weight after renorm vs torch")
    close(loaded.weight.grad, w.grad, "op module weight grad vs torch")
    close(psw.grad, p.grad, "op module psw grad vs torch")
    assert not torch.equal(loaded.weight, op_weight), "max_norm renormalized nothing"
    tensors.update(op_input=op_input, op_psw=op_psw, op_grad_out=op_grad_out,
                   op_output=op_output.detach(), op_weight_after=loaded.weight,
                   op_weight_grad=loaded.weight.grad, op_psw_grad=psw.grad)

    # -- op_function.pt: a scripted function (loads as a module whose forward is the function).
    gen = torch.Generator().manual_seed(5)
    fn_weight = torch.randn(NUM_EMBEDDINGS, DIM, generator=gen, dtype=torch.float64)
    fn_input = torch.randint(0, NUM_EMBEDDINGS, (10,), generator=gen)
    fn_input[[1, 6]] = NUM_EMBEDDINGS - 1
    fn_offsets = torch.tensor([0, 4, 4, 7])
    op_function.save(str(outdir / "op_function.pt"))
    fn_output = torch.jit.load(str(outdir / "op_function.pt"))(fn_input, fn_weight, fn_offsets)
    close(fn_output, F.embedding_bag(fn_input, fn_weight, fn_offsets, mode="mean",
                                     padding_idx=NUM_EMBEDDINGS - 1), "op function vs torch")
    tensors.update(fn_weight=fn_weight, fn_input=fn_input, fn_offsets=fn_offsets,
                   fn_output=fn_output)

    torch.jit.save(torch.jit.script(Expected(tensors)), str(outdir / "expected.pt"))
    print(f"make_scripted_model: wrote model.pt, max_model.pt, op_module.pt, op_function.pt and "
          f"expected.pt ({len(tensors)} tensors) to {outdir}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {sys.argv[0]} OUTDIR")
    main(Path(sys.argv[1]))
