"""mybag.EmbeddingBag against torch.nn.EmbeddingBag, swap_embedding_bags, and `python -m mybag`."""

import copy
import io
import os
import re
import subprocess
import sys

import mybag
import pytest
import torch
from mybag import EmbeddingBag, swap_embedding_bags
from torch import nn

NUM_EMBEDDINGS = 12
EMBEDDING_DIM = 4


def options_of(module):
    names = (
        "num_embeddings",
        "embedding_dim",
        "max_norm",
        "norm_type",
        "scale_grad_by_freq",
        "mode",
        "sparse",
        "include_last_offset",
        "padding_idx",
    )
    return {name: getattr(module, name) for name in names}


def pair(**options):
    """A torch module and a mybag module with the same options and equal (unshared) weights."""
    theirs = nn.EmbeddingBag(NUM_EMBEDDINGS, EMBEDDING_DIM, **options)
    ours = EmbeddingBag(NUM_EMBEDDINGS, EMBEDDING_DIM, **options)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def bags(form, dtype=torch.int64, padding_idx=None, seed=0):
    """(input, offsets) of the given form; includes repeated indices, an empty bag for the 1-D
    forms and padding entries when padding_idx is given."""
    generator = torch.Generator().manual_seed(seed)
    if form == "2d":
        input = torch.randint(0, NUM_EMBEDDINGS, (5, 3), generator=generator)
        input[0, 0] = input[0, 2] = 6
        if padding_idx is not None:
            input[1, 1] = padding_idx % NUM_EMBEDDINGS
        return input.to(dtype), None
    input = torch.randint(0, NUM_EMBEDDINGS, (11,), generator=generator)
    input[0] = input[1] = 6
    if padding_idx is not None:
        input[3] = input[7] = padding_idx % NUM_EMBEDDINGS
    if form == "1d":
        offsets = torch.tensor([0, 2, 2, 6, 9])
    else:  # "1d_last": include_last_offset=True, offsets has B + 1 entries
        offsets = torch.tensor([0, 2, 2, 6, 9, 11])
    return input.to(dtype), offsets.to(dtype)


# ---------------------------------------------------------------------------------------------
# Constructor, validation, repr


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"mode": "sum"},
        {"mode": "max", "max_norm": 1.5, "norm_type": 1.0},
        {"mode": "sum", "scale_grad_by_freq": True, "sparse": True},
        {"include_last_offset": True, "padding_idx": 0},
        {"padding_idx": -1},
        {"padding_idx": -NUM_EMBEDDINGS},
        {"padding_idx": NUM_EMBEDDINGS - 1},
    ],
)
def test_constructor_matches_torch(options):
    ours, theirs = pair(**options)
    assert options_of(ours) == options_of(theirs)
    assert [name for name, _ in ours.named_parameters()] == ["weight"]
    assert isinstance(ours.weight, nn.Parameter) and ours.weight.requires_grad
    assert ours.weight.shape == (NUM_EMBEDDINGS, EMBEDDING_DIM)
    assert ours.weight.dtype == theirs.weight.dtype
    assert list(ours.buffers()) == []
    assert repr(ours) == "mybag." + repr(theirs)


def test_constructor_defaults_match_torch():
    ours = EmbeddingBag(3, 2)
    theirs = nn.EmbeddingBag(3, 2)
    assert options_of(ours) == options_of(theirs)
    assert ours.mode == "mean" and ours.padding_idx is None and ours.max_norm is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_constructor_device_and_dtype(dtype):
    module = EmbeddingBag(5, 3, dtype=dtype, device="cpu")
    assert module.weight.dtype == dtype
    assert module.weight.device.type == "cpu"


@pytest.mark.parametrize("padding_idx", [NUM_EMBEDDINGS, NUM_EMBEDDINGS + 5, -NUM_EMBEDDINGS - 1])
def test_padding_idx_out_of_range_is_a_value_error(padding_idx):
    with pytest.raises(AssertionError):  # what torch does
        nn.EmbeddingBag(NUM_EMBEDDINGS, EMBEDDING_DIM, padding_idx=padding_idx)
    with pytest.raises(ValueError, match=rf"padding_idx={padding_idx}\b.*\[-12, 12\)"):
        EmbeddingBag(NUM_EMBEDDINGS, EMBEDDING_DIM, padding_idx=padding_idx)


def test_weight_of_wrong_shape_is_a_value_error():
    with pytest.raises(AssertionError):  # what torch does
        nn.EmbeddingBag(4, 3, _weight=torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        EmbeddingBag(4, 3, _weight=torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\(12,\)"):
        EmbeddingBag(4, 3, _weight=torch.zeros(12))


def test_given_weight_is_wrapped_without_copy():
    table = torch.randn(4, 3, dtype=torch.float64)
    module = EmbeddingBag(4, 3, _weight=table, padding_idx=1)
    assert module.weight.data_ptr() == table.data_ptr()
    assert module.weight.dtype == torch.float64
    # Like torch: a given table is not re-initialized, its padding row is left as is.
    torch.testing.assert_close(module.weight.detach(), table)
    assert module.weight[1].abs().sum() > 0


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, "EmbeddingBag(12, 4, mode='mean')"),
        ({"mode": "sum", "padding_idx": -2}, "EmbeddingBag(12, 4, mode='sum', padding_idx=10)"),
        (
            {"max_norm": 2.0, "norm_type": 1.0, "scale_grad_by_freq": True, "mode": "max"},
            ("EmbeddingBag(12, 4, max_norm=2.0, norm_type=1.0, scale_grad_by_freq=True, "
             "mode='max')"),
        ),
    ],
)
def test_repr(options, expected):
    # torch's fields, word for word, under a name that says the module is mybag's: a swapped
    # model must not print exactly like the original.
    ours, theirs = pair(**options)
    assert repr(theirs) == expected
    assert repr(ours) == "mybag." + expected


def test_repr_of_a_swapped_model_names_mybag():
    model = nn.Sequential(nn.EmbeddingBag(1000, 64, mode="sum"), nn.Linear(64, 1))
    assert "(0): EmbeddingBag(1000, 64, mode='sum')" in repr(model)
    swap_embedding_bags(model)
    assert "(0): mybag.EmbeddingBag(1000, 64, mode='sum')" in repr(model)


# ---------------------------------------------------------------------------------------------
# Initialization and state_dict


@pytest.mark.parametrize("padding_idx", [None, 0, 5, -1])
def test_initialization_draws_what_torch_draws(padding_idx):
    torch.manual_seed(1234)
    theirs = nn.EmbeddingBag(NUM_EMBEDDINGS, EMBEDDING_DIM, padding_idx=padding_idx)
    torch.manual_seed(1234)
    ours = EmbeddingBag(NUM_EMBEDDINGS, EMBEDDING_DIM, padding_idx=padding_idx)
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=0)


def test_reset_parameters_zeroes_the_padding_row():
    module = EmbeddingBag(1000, 8, padding_idx=-3)
    with torch.no_grad():
        module.weight.fill_(7.0)
    module.reset_parameters()
    weight = module.weight.detach()
    assert torch.all(weight[997] == 0)
    others = torch.cat([weight[:997], weight[998:]])
    assert torch.all(others != 7.0)
    # N(0, 1): loose moments over 8k draws.
    assert abs(others.mean().item()) < 0.1
    assert abs(others.std().item() - 1.0) < 0.1
    assert module.weight.grad_fn is None and module.weight.requires_grad


def test_reset_parameters_is_not_recorded_by_autograd():
    module = EmbeddingBag(6, 2, padding_idx=0)
    module.reset_parameters()
    assert module.weight.grad_fn is None
    assert module.weight.is_leaf


def test_state_dict_keys_match_torch():
    ours, theirs = pair(mode="sum", padding_idx=2)
    assert list(ours.state_dict().keys()) == list(theirs.state_dict().keys()) == ["weight"]


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_torch_state_loads_into_mybag_and_back(mode):
    torch.manual_seed(0)
    theirs = nn.EmbeddingBag(NUM_EMBEDDINGS, EMBEDDING_DIM, mode=mode, padding_idx=1)
    ours = EmbeddingBag(NUM_EMBEDDINGS, EMBEDDING_DIM, mode=mode, padding_idx=1)
    assert not torch.equal(ours.weight, theirs.weight)  # independent initializations
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    input, offsets = bags("1d", padding_idx=1)
    torch.testing.assert_close(ours(input, offsets), theirs(input, offsets))

    # Back: a state saved from mybag (through a file-like object) loads into torch's module.
    with torch.no_grad():
        ours.weight.mul_(3.0)
    buffer = io.BytesIO()
    torch.save(ours.state_dict(), buffer)
    buffer.seek(0)
    fresh = nn.EmbeddingBag(NUM_EMBEDDINGS, EMBEDDING_DIM, mode=mode, padding_idx=1)
    fresh.load_state_dict(torch.load(buffer), strict=True)
    torch.testing.assert_close(fresh(input, offsets), ours(input, offsets))
    torch.testing.assert_close(fresh.weight, ours.weight, rtol=0, atol=0)


def test_state_dict_of_a_model_loads_into_its_swapped_copy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.EmbeddingBag(9, 3, mode="sum"), nn.Linear(3, 2))
    state = copy.deepcopy(model.state_dict())
    swapped = swap_embedding_bags(copy.deepcopy(model))
    assert isinstance(swapped[0], EmbeddingBag)
    with torch.no_grad():
        for parameter in swapped.parameters():
            parameter.zero_()
    swapped.load_state_dict(state, strict=True)
    input = torch.tensor([[1, 2], [3, 8]])
    torch.testing.assert_close(swapped(input), model(input))


# ---------------------------------------------------------------------------------------------
# from_pretrained


@pytest.mark.parametrize("freeze", [True, False])
def test_from_pretrained(freeze):
    table = torch.randn(7, 3)
    ours = EmbeddingBag.from_pretrained(table, freeze=freeze, mode="sum", padding_idx=-1)
    theirs = nn.EmbeddingBag.from_pretrained(table, freeze=freeze, mode="sum", padding_idx=-1)
    assert type(ours) is EmbeddingBag
    assert options_of(ours) == options_of(theirs)
    assert ours.padding_idx == 6
    assert ours.weight.requires_grad is (not freeze)
    assert ours.weight.data_ptr() == table.data_ptr()  # no copy, like torch
    torch.testing.assert_close(ours.weight.detach(), table, rtol=0, atol=0)
    input = torch.tensor([[0, 6, 2], [5, 5, 1]])
    torch.testing.assert_close(ours(input), theirs(input))
    if not freeze:
        ours(input).sum().backward()
        assert ours.weight.grad is not None
        assert torch.all(ours.weight.grad[6] == 0)


# Every option away from its default (padding_idx comes with each test).
EVERY_OPTION = {"max_norm": 3.0, "norm_type": 1.5, "scale_grad_by_freq": True, "mode": "sum",
                "sparse": True, "include_last_offset": True}


def test_from_pretrained_passes_every_option():
    table = torch.randn(7, 3, dtype=torch.float64)
    options = dict(EVERY_OPTION, padding_idx=2)
    ours = EmbeddingBag.from_pretrained(table, **options)
    theirs = nn.EmbeddingBag.from_pretrained(table.clone(), **options)
    assert options_of(ours) == options_of(theirs)
    assert ours.weight.dtype == torch.float64


@pytest.mark.parametrize("shape", [(6,), (2, 3, 4), ()])
def test_from_pretrained_rejects_non_2d(shape):
    with pytest.raises(ValueError, match=re.escape(str(tuple(shape)))):
        EmbeddingBag.from_pretrained(torch.zeros(shape))


# ---------------------------------------------------------------------------------------------
# forward and backward against nn.EmbeddingBag


FORWARD_CASES = [
    (mode, form, padding_idx, weighted)
    for mode in ("sum", "mean", "max")
    for form in ("1d", "1d_last", "2d")
    for padding_idx in (None, 4, -1)
    for weighted in (False, True)
    if not (weighted and mode != "sum")
]


@pytest.mark.parametrize("mode, form, padding_idx, weighted", FORWARD_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_backward_match_torch(mode, form, padding_idx, weighted, dtype):
    ours, theirs = pair(
        mode=mode, padding_idx=padding_idx, include_last_offset=(form == "1d_last")
    )
    ours.to(dtype)
    theirs.to(dtype)
    input, offsets = bags(form, padding_idx=padding_idx)
    generator = torch.Generator().manual_seed(1)
    psw = torch.randn(input.shape, dtype=dtype, generator=generator) if weighted else None
    psw_ours = psw.clone().requires_grad_() if weighted else None
    psw_theirs = psw.clone().requires_grad_() if weighted else None

    out_ours = ours(input, offsets, per_sample_weights=psw_ours)
    out_theirs = theirs(input, offsets, per_sample_weights=psw_theirs)
    assert out_ours.shape == out_theirs.shape
    assert out_ours.dtype == dtype
    torch.testing.assert_close(out_ours, out_theirs)

    grad_output = torch.randn(out_theirs.shape, dtype=dtype, generator=generator)
    out_ours.backward(grad_output)
    out_theirs.backward(grad_output)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)
    if weighted:
        torch.testing.assert_close(psw_ours.grad, psw_theirs.grad)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_int32_indices(mode):
    ours, theirs = pair(mode=mode)
    input, offsets = bags("1d", dtype=torch.int32)
    torch.testing.assert_close(ours(input, offsets), theirs(input, offsets))
    input, _ = bags("2d", dtype=torch.int32)
    torch.testing.assert_close(ours(input), theirs(input))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_max_norm_renormalizes_like_torch(mode):
    ours, theirs = pair(mode=mode, max_norm=1.0, norm_type=2.0)
    with torch.no_grad():
        for module in (ours, theirs):
            module.weight.mul_(4.0)  # most rows now exceed max_norm
    input, offsets = bags("1d")
    torch.testing.assert_close(ours(input, offsets), theirs(input, offsets))
    # The referenced rows were scaled in place, the others left alone, exactly as torch does.
    torch.testing.assert_close(ours.weight, theirs.weight)
    referenced = torch.unique(input)
    assert torch.all(ours.weight.detach()[referenced].norm(dim=1) <= 1.0 + 1e-5)


def test_sparse_gradient_matches_torch_dense():
    ours, theirs = pair(mode="sum", sparse=True, padding_idx=4)
    input, offsets = bags("1d", padding_idx=4)
    ours(input, offsets).sum().backward()
    theirs(input, offsets).sum().backward()
    assert ours.weight.grad.is_sparse
    assert ours.weight.grad.shape == (NUM_EMBEDDINGS, EMBEDDING_DIM)
    torch.testing.assert_close(ours.weight.grad.to_dense(), theirs.weight.grad.to_dense())


def test_module_errors_like_the_functional():
    module = EmbeddingBag(NUM_EMBEDDINGS, EMBEDDING_DIM, mode="sum")
    before = module.weight.detach().clone()
    with pytest.raises(IndexError, match=str(NUM_EMBEDDINGS + 3)):
        module(torch.tensor([0, NUM_EMBEDDINGS + 3]), torch.tensor([0]))
    with pytest.raises(ValueError, match="offsets"):
        module(torch.tensor([0, 1]))  # 1-D input without offsets
    torch.testing.assert_close(module.weight, before, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# swap_embedding_bags


class Recommender(nn.Module):
    """Two nn.EmbeddingBag at different depths (ModuleDict, Sequential) and a Linear head."""

    def __init__(self):
        super().__init__()
        self.tables = nn.ModuleDict(
            {
                # Not scale_grad_by_freq: its reference here would be CPU torch, which has had
                # a bug there (#190063; tests/op/test_gradients.py checks it by hand instead).
                "user": nn.EmbeddingBag(20, 4, mode="sum", max_norm=3.0),
                "item": nn.Sequential(nn.EmbeddingBag(15, 4, mode="max", padding_idx=0)),
            }
        )
        self.head = nn.Linear(8, 1)

    def forward(self, user_ids, user_offsets, user_weights, item_ids):
        user = self.tables["user"](user_ids, user_offsets, per_sample_weights=user_weights)
        item = self.tables["item"](item_ids)
        return self.head(torch.cat([user, item], dim=1))


def recommender_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    user_ids = torch.randint(0, 20, (10,), generator=generator)
    user_ids[1] = user_ids[2] = user_ids[7]  # a repeated index
    user_offsets = torch.tensor([0, 3, 5, 5])
    user_weights = torch.rand(10, generator=generator)
    item_ids = torch.randint(0, 15, (4, 3), generator=generator)
    item_ids[0, 1] = 0  # padding
    target = torch.randn(4, 1, generator=generator)
    return (user_ids, user_offsets, user_weights, item_ids), target


def test_swap_replaces_nested_bags_and_shares_parameters():
    torch.manual_seed(0)
    model = Recommender()
    reference = copy.deepcopy(model)
    user, item, head = model.tables["user"], model.tables["item"][0], model.head
    parameters_before = list(model.parameters())

    returned = swap_embedding_bags(model)

    assert returned is model
    new_user, new_item = model.tables["user"], model.tables["item"][0]
    assert type(new_user) is EmbeddingBag and type(new_item) is EmbeddingBag
    assert model.head is head  # other modules untouched
    assert new_user.weight is user.weight and new_item.weight is item.weight
    assert [id(p) for p in model.parameters()] == [id(p) for p in parameters_before]
    assert options_of(new_user) == options_of(user)
    assert options_of(new_item) == options_of(item)
    assert not any(type(m) is nn.EmbeddingBag for m in model.modules())
    assert list(model.state_dict().keys()) == list(reference.state_dict().keys())

    inputs, _ = recommender_batch()
    out, expected = model(*inputs), reference(*inputs)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    expected.sum().backward()
    for (name, ours), (_, theirs) in zip(model.named_parameters(), reference.named_parameters()):
        assert ours.grad is not None, name
        torch.testing.assert_close(ours.grad, theirs.grad, msg=name)


def test_swap_keeps_an_existing_optimizer_working():
    torch.manual_seed(0)
    model = Recommender()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    swap_embedding_bags(model)
    before = model.tables["user"].weight.detach().clone()
    inputs, target = recommender_batch()
    loss = nn.functional.mse_loss(model(*inputs), target)
    loss.backward()
    optimizer.step()
    after = model.tables["user"].weight.detach()
    assert not torch.equal(before, after)
    # Exactly the rows that were looked up moved.
    moved = (before != after).any(dim=1).nonzero().flatten()
    assert set(moved.tolist()) == set(inputs[0].tolist())


def test_swap_of_a_bare_embedding_bag_returns_the_replacement():
    module = nn.EmbeddingBag(6, 3, mode="sum", padding_idx=-1, include_last_offset=True)
    module.eval()
    swapped = swap_embedding_bags(module)
    assert type(swapped) is EmbeddingBag
    assert swapped.weight is module.weight
    assert swapped.training is False
    assert options_of(swapped) == options_of(module)


def test_swap_leaves_mybag_modules_and_subclasses_alone():
    class CustomBag(nn.EmbeddingBag):
        def forward(self, input, offsets=None, per_sample_weights=None):
            return super().forward(input, offsets, per_sample_weights) * 2

    ours = EmbeddingBag(5, 2)
    custom = CustomBag(5, 2)
    model = nn.ModuleList([ours, custom, nn.ReLU()])
    swap_embedding_bags(model)
    assert model[0] is ours
    assert model[1] is custom
    assert swap_embedding_bags(ours) is ours


def test_swap_keeps_a_shared_bag_shared():
    shared = nn.EmbeddingBag(8, 3, mode="sum")
    model = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared)})
    swap_embedding_bags(model)
    assert type(model["a"]) is EmbeddingBag
    assert model["a"] is model["b"][0]
    assert model["a"].weight is shared.weight


def test_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match="Linear"):
        EmbeddingBag.from_torch(nn.Linear(2, 2))


def test_from_torch_copies_every_option():
    module = nn.EmbeddingBag(9, 5, **EVERY_OPTION, padding_idx=-2, dtype=torch.float64)
    ours = EmbeddingBag.from_torch(module)
    assert options_of(ours) == options_of(module)
    assert ours.weight is module.weight
    assert ours.weight.dtype == torch.float64
    assert repr(ours) == "mybag." + repr(module)


# ---------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_adam_training_matches_torch(mode):
    torch.manual_seed(0)
    reference = Recommender()
    for table in (reference.tables["user"], reference.tables["item"][0]):
        table.mode = mode
        table.scale_grad_by_freq = False  # CPU torch has had bugs there (docs/spec.md §5)
    model = swap_embedding_bags(copy.deepcopy(reference))
    assert type(model.tables["user"]) is EmbeddingBag
    initial = model.tables["user"].weight.detach().clone()
    optimizers = [torch.optim.Adam(m.parameters(), lr=0.05) for m in (model, reference)]
    for step in range(5):
        inputs, target = recommender_batch(seed=step)
        if mode != "sum":
            inputs = (inputs[0], inputs[1], None, inputs[3])
        for net, optimizer in zip((model, reference), optimizers):
            optimizer.zero_grad()
            nn.functional.mse_loss(net(*inputs), target).backward()
            optimizer.step()
        for (name, ours), (_, theirs) in zip(
            model.named_parameters(), reference.named_parameters()
        ):
            torch.testing.assert_close(ours, theirs, msg=f"step {step}: {name}")
    assert not torch.equal(model.tables["user"].weight, initial)  # it did train


# ---------------------------------------------------------------------------------------------
# python -m mybag


def test_python_dash_m_mybag_runs_and_reports_parity():
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(mybag.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "mybag"],
        check=False,  # the return code is asserted below, with the output
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    summary = r"parity: (\d+)/(\d+) cases match torch\.nn\.functional\.embedding_bag"
    match = re.match(summary, lines[-1])
    assert match, lines[-1]
    assert match.group(1) == match.group(2) and int(match.group(2)) >= 48
    assert "FAIL" not in result.stdout
    # The seed example's expected values from the issue are printed.
    assert "0.3333" in result.stdout and "0.4667" in result.stdout


def test_main_returns_zero_and_counts_cases(capsys):
    from mybag.__main__ import main

    assert main(["--quiet"]) == 0
    output = capsys.readouterr().out
    assert output.strip().splitlines()[-1].startswith("parity: ")
    assert "ok " not in output  # --quiet prints failures only


def test_main_reports_a_mismatch(monkeypatch, capsys):
    """The parity check can fail: a wrong operator makes main() return 1 and say FAIL."""
    import mybag.__main__ as entry

    real = entry._run_case

    def broken(mode, *args):
        if mode == "max":
            return "output differs: injected"
        return real(mode, *args)

    monkeypatch.setattr(entry, "_run_case", broken)
    assert entry.main(["--quiet"]) == 1
    output = capsys.readouterr().out
    assert "FAIL" in output
    match = re.search(r"parity: (\d+)/(\d+)", output.strip().splitlines()[-1])
    assert match and int(match.group(1)) < int(match.group(2))
