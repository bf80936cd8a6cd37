"""Mask: densities, algebra, validation against a model, safetensors round trip, bad files."""

import pytest
import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask
from ticketlab.targets import output_layer_name, prunable_parameters


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))


def test_targets_skip_bias_and_batchnorm():
    model = _model()
    assert list(prunable_parameters(model)) == ["0.weight", "3.weight"]
    assert output_layer_name(model) == "3.weight"
    assert list(prunable_parameters(model, ignore=["output"])) == ["0.weight"]
    with pytest.raises(TicketlabError, match="matches no"):
        prunable_parameters(model, ignore=["nothing_here"])


def test_densities_and_algebra():
    mask = Mask({"a": torch.tensor([True, False, True, True]), "b": torch.tensor([False, False])})
    assert mask.num_kept() == 3 and mask.num_total() == 6
    assert mask.density() == pytest.approx(0.5)
    assert mask.layer_densities() == {"a": 0.75, "b": 0.0}
    assert mask.collapsed_layers() == ["b"]
    smaller = Mask({"a": torch.tensor([True, False, False, True]), "b": torch.tensor([False, False])})
    assert smaller.is_subset_of(mask) and not mask.is_subset_of(smaller)
    assert (mask & smaller) == smaller


def test_shuffle_keeps_layer_counts():
    g = torch.Generator().manual_seed(1)
    mask = Mask({"a": torch.rand(50, 50, generator=g) > 0.7})
    shuffled = mask.shuffled(torch.Generator().manual_seed(3))
    assert int(shuffled["a"].sum()) == int(mask["a"].sum())
    assert shuffled != mask


def test_apply_and_validate():
    model = _model()
    params = prunable_parameters(model)
    mask = Mask({n: torch.rand(p.shape) > 0.5 for n, p in params.items()})
    mask.apply_(model)
    for name, p in params.items():
        assert (p[~mask[name]] == 0).all()
    with pytest.raises(TicketlabError, match="does not have"):
        Mask({"nope.weight": torch.ones(2, dtype=torch.bool)}).validate(model)
    with pytest.raises(TicketlabError, match="shape"):
        Mask({"0.weight": torch.ones(2, 2, dtype=torch.bool)}).validate(model)


def test_save_load_roundtrip_and_bad_files(tmp_path):
    mask = Mask({"a": torch.tensor([[True, False], [False, True]]), "b": torch.ones(3, dtype=torch.bool)})
    mask.save(tmp_path / "m.safetensors", {"round": 2})
    assert Mask.load(tmp_path / "m.safetensors") == mask
    with pytest.raises(TicketlabError, match="does not exist"):
        Mask.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(TicketlabError, match="not a readable"):
        Mask.load(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file
    save_file({"a": torch.ones(2)}, str(tmp_path / "float.safetensors"))
    with pytest.raises(TicketlabError, match="non-boolean"):
        Mask.load(tmp_path / "float.safetensors")


def test_differing_counts_disagreeing_positions_and_needs_one_layout():
    a = Mask({"w": torch.tensor([[True, False], [True, True]]), "v": torch.tensor([True, False, False])})
    b = Mask({"w": torch.tensor([[True, True], [False, True]]), "v": torch.tensor([True, False, True])})
    assert a.differing(b) == 3 and a.differing(a) == 0
    with pytest.raises(TicketlabError, match="different parameters or shapes"):
        a.differing(Mask({"w": torch.ones(2, 2, dtype=torch.bool)}))
