"""torch.compile of training over inputs of many lengths: at most two graphs (the first, static
one and one dynamic one), with dense and sparse gradients, trained weights equal to eager's.

Before the fix, building the sparse gradient read a size of the per-entry gradient as an
integer, which guarded the number of entries to its traced value: a new graph for every input
length until the recompile limit, then eager (or FailOnRecompileLimitHit with fullgraph=True).
"""

import pytest
import torch
from torch import nn
from torch._dynamo.backends.common import aot_autograd

import mybag

NUM_EMBEDDINGS = 40
DIM = 6
LENGTHS = list(range(3, 19))
STEPS_PER_LENGTH = 1


class Model(nn.Module):
    def __init__(self, bag_class, **options):
        super().__init__()
        torch.manual_seed(3)
        self.bag = bag_class(NUM_EMBEDDINGS, DIM, dtype=torch.float64, **options)
        self.head = nn.Linear(DIM, 1, dtype=torch.float64)

    def forward(self, input, offsets):
        return self.head(self.bag(input, offsets)).pow(2).mean()


def batches():
    generator = torch.Generator().manual_seed(11)
    for length in LENGTHS:
        input = torch.randint(0, NUM_EMBEDDINGS, (length,), generator=generator)
        offsets = torch.tensor([0, length // 3, length // 2])
        yield input, offsets


def train(model, forward):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for input, offsets in batches():
        optimizer.zero_grad()
        forward(input, offsets).backward()
        optimizer.step()


class CountingBackend:
    """aot_eager that counts the forward graphs it compiles (one per dynamo graph) and the
    backward graphs."""

    def __init__(self):
        self.forward_graphs = 0
        self.backward_graphs = 0

        def forward_compiler(gm, example_inputs):
            self.forward_graphs += 1
            return gm.forward

        def backward_compiler(gm, example_inputs):
            self.backward_graphs += 1
            return gm.forward

        self.backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=backward_compiler)

    def __call__(self, gm, example_inputs):
        return self.backend(gm, example_inputs)


OPTIONS = [
    dict(mode="sum", sparse=True),
    dict(mode="mean", sparse=True, padding_idx=0),
    dict(mode="sum", sparse=True, scale_grad_by_freq=True),
    dict(mode="mean", sparse=False),
    dict(mode="max", sparse=False),
]


@pytest.mark.parametrize(
    "options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())
)
def test_training_compiles_at_most_two_graphs_and_matches_eager(options):
    torch._dynamo.reset()
    eager = Model(mybag.EmbeddingBag, **options)
    compiled_model = Model(mybag.EmbeddingBag, **options)
    counter = CountingBackend()
    # fullgraph=True: a recompile-limit hit raises instead of silently running eagerly.
    compiled = torch.compile(compiled_model, backend=counter, fullgraph=True)

    train(eager, eager)
    train(compiled_model, compiled)

    assert counter.forward_graphs <= 2, (
        f"{counter.forward_graphs} forward graphs for {len(LENGTHS)} lengths"
    )
    assert counter.backward_graphs <= 2, f"{counter.backward_graphs} backward graphs"
    for name, value in eager.state_dict().items():
        assert value.isfinite().all(), f"eager training diverged: {name}"
        torch.testing.assert_close(
            compiled_model.state_dict()[name], value, rtol=1e-12, atol=1e-12, msg=name
        )
    if options["sparse"]:
        assert compiled_model.bag.weight.grad.is_sparse


def test_torch_module_compiles_as_few_graphs():
    # The yardstick: what torch's own module does on the same loop.
    torch._dynamo.reset()
    model = Model(nn.EmbeddingBag, mode="sum", sparse=True)
    counter = CountingBackend()
    train(model, torch.compile(model, backend=counter, fullgraph=True))
    assert counter.forward_graphs <= 2


def compiled_step_counts(bag_class, options):
    """Compiles a whole training step (zero_grad, forward, backward, optimizer step) and
    trains over all lengths; returns the graph counts and the model, and checks it against
    eager training."""
    torch._dynamo.reset()
    eager = Model(bag_class, **options)
    model = Model(bag_class, **options)
    counter = CountingBackend()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    @torch.compile(backend=counter)
    def step(input, offsets):
        optimizer.zero_grad()
        loss = model(input, offsets)
        loss.backward()
        optimizer.step()
        return loss

    for input, offsets in batches():
        step(input, offsets)
    train(eager, eager)
    for name, value in eager.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=1e-12, atol=1e-12)
    return counter.forward_graphs, counter.backward_graphs


@pytest.mark.parametrize(
    "options", [dict(mode="sum", sparse=True), dict(mode="mean", sparse=False)]
)
def test_compiled_training_step_compiles_as_many_graphs_as_torch(options):
    # The step graph-breaks at backward(); torch's module on the same loop is the yardstick:
    # loss graphs at most two, plus the optimizer's.
    ours = compiled_step_counts(mybag.EmbeddingBag, options)
    theirs = compiled_step_counts(nn.EmbeddingBag, options)
    assert ours == theirs
    assert ours[0] <= 3 and ours[1] <= 2, ours
