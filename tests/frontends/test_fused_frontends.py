"""mybag.FusedEmbeddingBag (issue 14, /work/shared_notes/fused_api.md) through the front ends:
TorchScript, torch.compile, and a small model that trains.

A fused module updates its table inside loss.backward(), so "the same training" means the same
table, optimizer state and step after each backward, not the same gradient. Each test trains an
eager model and a scripted/compiled copy of it on the same batches and compares them after every
step.
"""

import copy

import mybag
import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from torch import nn

pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")

NUM_EMBEDDINGS = 40
DIM = 8
STATE_NAMES = {
    "sgd": [],
    "adagrad": ["sum"],
    "rowwise_adagrad": ["sum"],
    "adam": ["exp_avg", "exp_avg_sq"],
}
HP = {
    "sgd": {"lr": 0.2},
    "adagrad": {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1},
    "rowwise_adagrad": {"lr": 0.1},
    "adam": {"lr": 0.05, "betas": (0.8, 0.95)},
}
OPTIMIZERS = list(STATE_NAMES)


class Model(nn.Module):
    """An embedding bag under a linear layer: the bag's backward gets a gradient computed by
    the model (the linear layer's backward), not one handed to it."""

    def __init__(self, bag: nn.Module):
        super().__init__()
        self.bag = bag
        self.linear = nn.Linear(bag.weight.shape[1], 1, dtype=bag.weight.dtype,
                                device=bag.weight.device)

    def forward(self, input: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.linear(self.bag(input, offsets)).squeeze(-1)


def make_model(optimizer, device, mode="sum", padding_idx=None, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    bag = mybag.FusedEmbeddingBag(NUM_EMBEDDINGS, DIM, mode=mode, padding_idx=padding_idx,
                                  device=device, dtype=dtype, optimizer=optimizer,
                                  **HP[optimizer])
    return Model(bag)


def batch(step, device, num_bags=6, padding_idx=None):
    """1-D input with offsets: varying bag sizes, one empty bag, rows repeating."""
    g = torch.Generator().manual_seed(1000 + step)
    sizes = torch.randint(1, 6, (num_bags,), generator=g)
    sizes[2] = 0
    inp = torch.randint(0, NUM_EMBEDDINGS, (int(sizes.sum()),), generator=g)
    if padding_idx is not None:
        inp[::4] = padding_idx % NUM_EMBEDDINGS
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)[:-1]])
    target = torch.randn(num_bags, generator=g)
    return inp.to(device), offsets.to(device), target.to(device)


def train_step(model, inp, offsets, target):
    """One step: the fused bag updates itself in backward; the linear layer is left alone (its
    gradient accumulates, unused), so only the bag's update is compared."""
    out = model(inp, offsets)
    loss = (out - target.to(out.dtype)).pow(2).mean()
    loss.backward()
    return out.detach(), loss.detach()


def bag_state(model, optimizer):
    bag = model.bag
    state = {"weight": bag.weight.detach(), "step": bag.step}
    state.update({name: getattr(bag, name) for name in STATE_NAMES[optimizer]})
    return state


def assert_same_state(got, expected, exact, msg):
    assert got.keys() == expected.keys()
    for name in expected:
        if exact:
            assert torch.equal(got[name], expected[name]), f"{msg}: {name} differs"
        else:
            torch.testing.assert_close(got[name], expected[name], rtol=1.3e-6, atol=1e-6,
                                       msg=lambda m, name=name: f"{msg}: {name}: {m}")


# ---------------------------------------------------------------------------------------------
# TorchScript


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("mode,padding_idx", [("sum", None), ("mean", 3), ("max", -1)])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_script_trains_like_eager(device, optimizer, mode, padding_idx):
    eager = make_model(optimizer, device, mode, padding_idx)
    scripted = torch.jit.script(copy.deepcopy(eager))
    for k in range(3):
        inp, offsets, target = batch(k, device, padding_idx=padding_idx)
        out_e, _ = train_step(eager, inp, offsets, target)
        out_s, _ = train_step(scripted, inp, offsets, target)
        msg = f"{optimizer} {mode} step {k + 1}"
        torch.testing.assert_close(out_s, out_e, rtol=0, atol=0, msg=msg)
        assert scripted.bag.weight.grad is None, msg
        assert_same_state(bag_state(scripted, optimizer), bag_state(eager, optimizer), True, msg)
    assert int(scripted.bag.step) == 3
    # The scripted module was trained, not just run: its table moved away from the start.
    assert not torch.equal(scripted.bag.weight.detach(),
                           make_model(optimizer, device, mode, padding_idx).bag.weight.detach())


# ---------------------------------------------------------------------------------------------
# torch.compile


@pytest.fixture(autouse=False)
def reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compile_and_train(optimizer, device, backend, steps=3, mode="sum", padding_idx=None,
                      lr_schedule=None):
    """Trains an eager model and a compiled copy side by side; returns the compile counter and
    the per-step states. lr_schedule: {step: lr} set on both bags before that step."""
    eager = make_model(optimizer, device, mode, padding_idx)
    model = copy.deepcopy(eager)
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    # fullgraph: the fused op (forward, and its backward with the in-place update) is traced
    # whole, with no graph break around it.
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    # Exact for the "eager" backend (the same kernels run, in the same order), and for
    # "aot_eager" on the CPU (the traced graph runs the same aten kernels there). Elsewhere the
    # linear layer's backward may be computed otherwise (inductor generates its own code; on
    # CUDA the decomposed linear may take another cuBLAS path), so the gradient reaching the
    # bag may differ in its last bits: a tight float32 tolerance.
    exact = backend == "eager" or (backend == "aot_eager" and device == "cpu")
    for k in range(steps):
        if lr_schedule and k in lr_schedule:
            eager.bag.lr = lr_schedule[k]
            model.bag.lr = lr_schedule[k]
        inp, offsets, target = batch(k, device, padding_idx=padding_idx)
        out_e, _ = train_step(eager, inp, offsets, target)
        out_c, _ = train_step(compiled, inp, offsets, target)
        msg = f"{optimizer} {backend} step {k + 1}"
        torch.testing.assert_close(out_c, out_e, rtol=1.3e-6, atol=1e-6, msg=msg)
        assert model.bag.weight.grad is None, msg
        assert_same_state(bag_state(model, optimizer), bag_state(eager, optimizer), exact, msg)
    assert int(model.bag.step) == steps
    assert counter.frame_count >= 1  # it was compiled, not run eagerly
    return counter


# Every optimizer with the backends that generate no code; inductor (slow to compile on 2 CPU
# cores) with two of them: one stateless, one with the most state.
BACKEND_CASES = ([(opt, backend) for opt in OPTIMIZERS for backend in ["eager", "aot_eager"]]
                 + [("sgd", "inductor"), ("adam", "inductor")])


@pytest.mark.usefixtures("reset_dynamo")
@pytest.mark.parametrize("optimizer,backend", BACKEND_CASES)
def test_compile_trains_like_eager(device, optimizer, backend):
    compile_and_train(optimizer, device, backend)


@pytest.mark.usefixtures("reset_dynamo")
@pytest.mark.parametrize("mode,padding_idx", [("mean", 2), ("max", None)])
def test_compile_other_modes(device, mode, padding_idx):
    compile_and_train("adam", device, "aot_eager", mode=mode, padding_idx=padding_idx)


@pytest.mark.usefixtures("reset_dynamo")
def test_compile_does_not_recompile_between_steps(device):
    """Training steps on same-shaped batches reuse the compiled code: the state mutated in
    backward (table, Adam moments, step) must not invalidate the guards."""
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    model = torch.compile(make_model("adam", device), backend=counter, fullgraph=True)
    inp, offsets, target = batch(0, device)
    train_step(model, inp, offsets, target)
    after_first = counter.frame_count
    for _ in range(3):
        train_step(model, inp, offsets, target)
    assert counter.frame_count == after_first


@pytest.mark.usefixtures("reset_dynamo")
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_sees_lr_changes(device, backend):
    """m.lr is read at forward time: a compiled model must not keep the learning rate it was
    compiled with (a recompilation is fine, a stale constant is not)."""
    compile_and_train("adagrad", device, backend, steps=4, lr_schedule={1: 0.5, 3: 0.01})


# ---------------------------------------------------------------------------------------------
# A small model trains


def regression_data(device, steps, num_bags=32, seed=7):
    """Bags of a 40-row vocabulary; the target is a fixed linear function of the sum of a
    hidden table's rows, so a model of the same shape can fit it."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(NUM_EMBEDDINGS, DIM, generator=g)
    direction = torch.randn(DIM, generator=g)
    batches = []
    for _ in range(steps):
        sizes = torch.randint(1, 6, (num_bags,), generator=g)
        inp = torch.randint(0, NUM_EMBEDDINGS, (int(sizes.sum()),), generator=g)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)[:-1]])
        sums = torch.nn.functional.embedding_bag(inp, hidden, offsets, mode="sum")
        batches.append((inp.to(device), offsets.to(device), (sums @ direction).to(device)))
    return batches


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_small_model_trains_like_torch(device, optimizer):
    """FusedEmbeddingBag + Linear (torch.optim.SGD on the Linear only) against torch's
    nn.EmbeddingBag(sparse=True) + Linear, with the same optimizer for the bag from torch.optim:
    the losses are the same step by step, and they fall."""
    lr_bag = {"sgd": 0.05, "adagrad": 0.1}[optimizer]
    lr_linear = 0.02
    steps = 30
    torch.manual_seed(0)
    theirs = Model(nn.EmbeddingBag(NUM_EMBEDDINGS, DIM, mode="sum", sparse=True, device=device))
    ours = Model(mybag.FusedEmbeddingBag.from_embedding_bag(theirs.bag, optimizer=optimizer,
                                                            lr=lr_bag))
    ours.linear.load_state_dict(theirs.linear.state_dict())
    bag_opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adagrad)(
        theirs.bag.parameters(), lr=lr_bag)
    their_linear_opt = torch.optim.SGD(theirs.linear.parameters(), lr=lr_linear)
    our_linear_opt = torch.optim.SGD(ours.linear.parameters(), lr=lr_linear)

    our_losses, their_losses = [], []
    for inp, offsets, target in regression_data(device, steps):
        for model, opts, losses in [(theirs, [bag_opt, their_linear_opt], their_losses),
                                    (ours, [our_linear_opt], our_losses)]:
            for opt in opts:
                opt.zero_grad()
            _, loss = train_step(model, inp, offsets, target)
            for opt in opts:
                opt.step()
            losses.append(float(loss))
    assert ours.bag.weight.grad is None
    # float32, 30 steps of two optimizers: rounding differences (the gradient summed in
    # another order) compound a little from step to step.
    torch.testing.assert_close(torch.tensor(our_losses), torch.tensor(their_losses),
                               rtol=1e-5, atol=1e-6)
    first, last = sum(our_losses[:5]) / 5, sum(our_losses[-5:]) / 5
    assert last < 0.5 * first, our_losses
    torch.testing.assert_close(ours.bag.weight.detach(), theirs.bag.weight.detach(),
                               rtol=1e-5, atol=1e-5)
