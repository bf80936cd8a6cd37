"""Structural compaction on every registered vision model: the compacted network computes what the
masked one computes, dead units are really gone, and the architecture + compacted weights rebuild it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ticketlab.deploy.compact import compact_model, resize_to_state
from ticketlab.masks import Mask
from ticketlab.models import create_model, list_models
from ticketlab.targets import prunable_parameters

from conftest import randomise_biases_and_norms

SHAPES = {"lenet300": (1, 28, 28), "mlp1d": (40,), "conv2": (3, 16, 16), "conv4": (3, 16, 16),
          "conv6": (3, 16, 16), "resnet20": (3, 16, 16), "vgg16": (3, 16, 16)}


def _ticket(name: str, density_fc: float, density_conv: float, seed: int = 0) -> nn.Module:
    """A registered model with random masks applied and random biases / BatchNorm statistics, so dead
    units emit non-zero constants (the hard case for folding)."""
    model = create_model(name, SHAPES[name], 10, seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    params = prunable_parameters(model)
    Mask({n: torch.rand(p.shape, generator=g) < (density_fc if p.dim() == 2 else density_conv)
          for n, p in params.items()}).apply_(model)
    randomise_biases_and_norms(model, g)
    return model


def test_every_registered_vision_model_is_covered():
    assert {m.name for m in list_models()} == set(SHAPES)


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("density_fc, density_conv", [(0.02, 0.02), (0.1, 0.3), (1.0, 1.0)])
def test_compacted_outputs_equal_the_masked_model(name, density_fc, density_conv):
    model = _ticket(name, density_fc, density_conv)
    x = torch.randn(32, *SHAPES[name], generator=torch.Generator().manual_seed(5))
    compacted, report = compact_model(model, x[:1])
    with torch.no_grad():
        reference, result = model(x), compacted(x)
    assert (reference - result).abs().max() <= 1e-5 * reference.abs().max()
    assert set(report.widths_after) == set(report.widths_before)
    rebuilt = resize_to_state(create_model(name, SHAPES[name], 10, seed=9), compacted.state_dict())
    rebuilt.load_state_dict(compacted.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), result)
    if density_fc == 1.0:
        assert report.removed == 0


def test_lenet_units_are_really_removed_and_constants_folded():
    model = create_model("lenet300", (1, 28, 28), 10, seed=0).eval()
    layers = model.layers
    with torch.no_grad():
        layers[1].weight[5:] = 0          # units 5.. of layer 1: dead in (emit relu(bias))
        layers[1].bias[5:] = 0.5          # ... a non-zero constant, folded into layer 3's bias
        layers[3].weight[:, 3] = 0        # unit 3 of layer 1: dead out
        layers[3].weight[7:] = 0          # units 7.. of layer 3: dead in with zero bias -> removed
        layers[3].bias.zero_()
    x = torch.randn(16, 1, 28, 28)
    compacted, report = compact_model(model, x[:1])
    assert report.widths_after == {"layers.1": 4, "layers.3": 7}
    assert compacted.layers[1].weight.shape == (4, 784) and compacted.layers[3].weight.shape == (7, 4)
    assert compacted.layers[5].weight.shape == (10, 7)
    with torch.no_grad():
        assert torch.allclose(model(x), compacted(x), rtol=1e-5, atol=1e-6)


def test_a_constant_channel_before_a_padded_conv_is_kept_and_reported():
    model = create_model("conv4", (3, 16, 16), 10, seed=0).eval()
    with torch.no_grad():
        model.features[0].weight[:4] = 0
        model.features[0].bias[:4] = 1.0   # relu(1) = 1: not foldable into a padded conv
        model.features[0].bias[4:8] = -1.0
        model.features[0].weight[4:8] = 0  # relu(-1) = 0: removable
    compacted, report = compact_model(model, torch.zeros(1, 3, 16, 16))
    assert report.widths_after["features.0"] == 60 and report.kept_constant["features.0"] == 4
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), compacted(x), rtol=1e-5, atol=1e-6)


def test_a_residual_channel_goes_from_every_member_once_no_reader_uses_it():
    model = _ticket("resnet20", 1.0, 1.0)
    readers = ["blocks.0.conv1", "blocks.1.conv1", "blocks.2.conv1", "blocks.3.conv1", "blocks.3.shortcut.0"]
    with torch.no_grad():
        for name in readers:
            model.get_submodule(name).weight[:, 3] = 0      # stage 1's channel 3: written by 4 layers, read by none
        model.get_submodule("blocks.3.shortcut.0").weight[:, 5] = 0   # channel 5 is still read by blocks.0.conv1 ...
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    compacted, report = compact_model(model, x[:1])
    assert report.widths_before["conv"] == 16 and report.widths_after["conv"] == 15
    for writer in ("conv", "blocks.0.conv2", "blocks.1.conv2", "blocks.2.conv2"):
        assert compacted.get_submodule(writer).weight.shape[0] == 15
    assert compacted.bn.num_features == 15 and compacted.blocks[2].bn2.num_features == 15
    assert all(compacted.get_submodule(r).weight.shape[1] == 15 for r in readers)
    assert report.untouched == {"fc": "feeds the network's output"}
    with torch.no_grad():
        reference = model(x)
        assert (reference - compacted(x)).abs().max() <= 1e-5 * reference.abs().max()
