"""What torch's tools that special-case nn.EmbeddingBag do with mybag.EmbeddingBag, a subclass
of it (DDP has its own file, tests/frontends/test_ddp.py)."""

import warnings

import pytest
import torch
from torch import nn

import mybag
from mybag import EmbeddingBag, swap_embedding_bags

INPUT = torch.tensor([1, 2, 4, 5, 4, 3, 2, 9])
OFFSETS = torch.tensor([0, 4])


class TwoBags(nn.Module):
    def __init__(self):
        super().__init__()
        self.ours = EmbeddingBag(10, 4, mode="sum")
        self.theirs = nn.EmbeddingBag(10, 4, mode="sum")

    def forward(self, input, offsets):
        return self.ours(input, offsets) + self.theirs(input, offsets)


def quietly(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        return function(*args, **kwargs)


def test_is_an_nn_embedding_bag():
    assert isinstance(EmbeddingBag(3, 2), nn.EmbeddingBag)


@pytest.mark.parametrize(
    "qconfig_spec",
    [None, {nn.EmbeddingBag}, "by_name"],
    ids=["default", "set_of_types", "by_name"],
)
def test_quantize_dynamic_leaves_mybag_modules_in_float(qconfig_spec):
    from torch.ao.quantization import float_qparams_weight_only_qconfig, quantize_dynamic

    model = TwoBags()
    if qconfig_spec == "by_name":
        qconfig_spec = {
            "ours": float_qparams_weight_only_qconfig,
            "theirs": float_qparams_weight_only_qconfig,
        }
    expected = model.ours(INPUT, OFFSETS)
    quantized = quietly(quantize_dynamic, model, qconfig_spec, dtype=torch.quint8)
    # torch's module is quantized; mybag's is looked up by exact type, found in no mapping,
    # and left as it was.
    assert type(quantized.theirs) is torch.ao.nn.quantized.EmbeddingBag
    assert type(quantized.ours) is EmbeddingBag
    torch.testing.assert_close(quantized.ours(INPUT, OFFSETS), expected, rtol=0, atol=0)


def test_quantize_dynamic_cannot_be_forced_onto_mybag_modules():
    from torch.ao.nn.quantized import EmbeddingBag as QuantizedEmbeddingBag
    from torch.ao.quantization import float_qparams_weight_only_qconfig, quantize_dynamic

    with pytest.raises(AssertionError, match="only works for EmbeddingBag"):
        quietly(
            quantize_dynamic,
            nn.Sequential(EmbeddingBag(10, 4, mode="sum")),
            {EmbeddingBag: float_qparams_weight_only_qconfig},
            dtype=torch.quint8,
            mapping={EmbeddingBag: QuantizedEmbeddingBag},
        )


def test_prepare_qat_leaves_mybag_modules_alone():
    from torch.ao.quantization import default_embedding_qat_qconfig, prepare_qat

    model = TwoBags().train()
    expected = model.ours(INPUT, OFFSETS)
    model.qconfig = default_embedding_qat_qconfig
    prepared = quietly(prepare_qat, model)
    # torch's module gets an observer; mybag's is not in the type mappings and is untouched.
    assert hasattr(prepared.theirs, "activation_post_process")
    assert type(prepared.ours) is EmbeddingBag
    assert not hasattr(prepared.ours, "activation_post_process")
    torch.testing.assert_close(prepared.ours(INPUT, OFFSETS), expected, rtol=0, atol=0)


def test_fx_symbolic_trace_records_mybag_op():
    model = TwoBags()
    traced = torch.fx.symbolic_trace(model)
    targets = [node.target for node in traced.graph.nodes]
    # torch's module is a leaf (it lives in torch.nn); mybag's is traced through to its op.
    assert torch.ops.mybag.embedding_bag in targets
    assert "theirs" in targets
    torch.testing.assert_close(traced(INPUT, OFFSETS), model(INPUT, OFFSETS), rtol=0, atol=0)


def test_swap_never_replaces_a_mybag_module_again():
    model = TwoBags()
    ours = model.ours
    swap_embedding_bags(model)
    assert model.ours is ours
    assert type(model.theirs) is EmbeddingBag
    swapped = model.theirs
    swap_embedding_bags(model)
    assert model.theirs is swapped


def test_swap_leaves_quantized_modules_alone():
    from torch.ao.quantization import quantize_dynamic

    model = quietly(quantize_dynamic, TwoBags(), dtype=torch.quint8)
    quantized = model.theirs
    swap_embedding_bags(model)
    assert model.theirs is quantized


def test_repr_names_mybag():
    assert repr(EmbeddingBag(1000, 64, mode="sum")) == "mybag.EmbeddingBag(1000, 64, mode='sum')"
    assert repr(mybag.EmbeddingBag.from_torch(nn.EmbeddingBag(5, 2))) == (
        "mybag.EmbeddingBag(5, 2, mode='mean')"
    )


def test_fsdp_module_wrap_policy_wraps_mybag_modules_like_torchs():
    # FSDP's ModuleWrapPolicy matches with isinstance: a policy naming nn.EmbeddingBag gives
    # mybag's module its own FSDP unit, as it does torch's (training: tests/frontends/test_fsdp.py).
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    policy = ModuleWrapPolicy({nn.EmbeddingBag})
    assert policy(module=EmbeddingBag(5, 2), recurse=False, nonwrapped_numel=10)
    assert policy(module=nn.EmbeddingBag(5, 2), recurse=False, nonwrapped_numel=10)
    assert not policy(module=nn.Linear(5, 2), recurse=False, nonwrapped_numel=10)
