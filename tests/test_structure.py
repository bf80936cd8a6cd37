"""Structured sparsity: the granularity vocabulary, the dependency graph's coupled groups, group
scores against hand computations, exact counts, and compaction equal to the masked model for every
group kind on every registered vision model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ticketlab.deploy.compact import compact_model, resize_to_state
from ticketlab.errors import TicketlabError
from ticketlab.methods import magnitude_scores
from ticketlab.models import create_model, list_models
from ticketlab.select import GroupTarget, select_groups
from ticketlab.structure.granularity import Granularity
from ticketlab.structure.graph import channel_families
from ticketlab.groups import BlockFamily, GroupLayout
from ticketlab.structure.layouts import group_layout
from ticketlab.targets import prunable_parameters

from conftest import randomise_biases_and_norms

SHAPES = {"lenet300": (1, 28, 28), "mlp1d": (40,), "conv2": (3, 16, 16), "conv4": (3, 16, 16),
          "conv6": (3, 16, 16), "resnet20": (3, 16, 16), "vgg16": (3, 16, 16)}


# --- the vocabulary -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, kind, shown", [
    ("unstructured", "unstructured", "unstructured"), (" Unstructured ", "unstructured", "unstructured"),
    ("2:4", "nm", "2:4"), ("block:4x4", "block", "block:4x4"), ("block:1x8", "block", "block:1x8"),
    ("channel", "groups", "channel"), ("head", "groups", "head"), ("head+channel", "groups", "channel+head"),
])
def test_granularities_parse_and_print(text, kind, shown):
    granularity = Granularity.parse(text)
    assert granularity.kind == kind and str(granularity) == shown
    assert Granularity.parse(str(granularity)) == granularity


@pytest.mark.parametrize("text, fragment", [
    ("", "Cannot read --granularity"), ("channels", "Cannot read"), ("block:4", "Cannot read"),
    ("block:1x1", "unstructured"), ("block:0x4", "at least two"), ("block:300x300", "beyond the limit"),
    ("4:2", "0 < N < M"), ("2:2", "0 < N < M"), ("channel+channel", "Cannot read"), ("block:٤x٤", "Cannot read"),
    ("2 :4", "Cannot read"),
])
def test_bad_granularities_are_one_sentence(text, fragment):
    with pytest.raises(TicketlabError, match=fragment):
        Granularity.parse(text)


# --- the dependency graph -------------------------------------------------------------------------
def _layout(name: str, granularity: str = "channel"):
    model = create_model(name, SHAPES[name], 10, seed=0).eval()
    names = list(prunable_parameters(model))
    return model, group_layout(model, granularity, names, torch.zeros(2, *SHAPES[name]))


def test_every_registered_vision_model_is_covered():
    assert {m.name for m in list_models()} == set(SHAPES)


def test_lenet_channels_are_a_row_and_the_next_layers_column():
    _, layout = _layout("lenet300")
    assert list(layout.families) == ["layers.1", "layers.3"]
    hidden = layout.families["layers.1"]
    assert hidden.size == 300 and [(m.param, m.dim, m.span) for m in hidden.members] == [
        ("layers.1.weight", 0, 1), ("layers.3.weight", 1, 1)]
    assert layout.frozen == {"layers.5": "feeds the network's output"}


def test_a_flattened_conv_channel_owns_h_times_w_columns():
    _, layout = _layout("conv2")
    last_conv = layout.families["features.2"]
    assert [(m.param, m.dim, m.base, m.span) for m in last_conv.members] == [
        ("features.2.weight", 0, 0, 1), ("classifier.1.weight", 1, 0, 8 * 8)]   # 16x16 pooled once


def test_resnet20_stages_share_one_channel_set_with_their_shortcuts():
    _, layout = _layout("resnet20")
    stage1 = layout.families["conv"]
    assert set(stage1.producers) == {"conv", "blocks.0.conv2", "blocks.1.conv2", "blocks.2.conv2"}
    assert set(stage1.consumers) == {"blocks.0.conv1", "blocks.1.conv1", "blocks.2.conv1", "blocks.3.conv1",
                                     "blocks.3.shortcut.0"}
    assert set(stage1.norms) == {"bn", "blocks.0.bn2", "blocks.1.bn2", "blocks.2.bn2"}
    stage3 = layout.families["blocks.6.conv2"]
    assert {"blocks.6.shortcut.0", "blocks.7.conv2", "blocks.8.conv2"} <= set(stage3.producers)
    assert "fc" in stage3.consumers and stage3.size == 64
    inner = [f for f in layout if f.name.endswith("conv1")]
    assert len(inner) == 9 and all(len(f.producers) == 1 and len(f.consumers) == 1 for f in inner)
    assert layout.frozen == {"fc": "feeds the network's output"}


class _Concat(nn.Module):
    """Two branches concatenated along the channels, read by one conv: the reader's columns of
    branch b start at b's offset."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.merge = nn.Conv2d(10, 5, 1)
        self.head = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), self.b(x)], dim=1)
        return self.head(torch.flatten(torch.relu(self.merge(y)), 1))


class _Odd(nn.Module):
    """A channel that meets a transpose (not followed) and a grouped convolution."""

    def __init__(self):
        super().__init__()
        self.a, self.depthwise = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.b, self.c = nn.Conv2d(4, 4, 1), nn.Linear(4, 2)

    def forward(self, x):
        y = self.b(self.depthwise(self.a(x)))
        return self.c(y.mean(dim=(2, 3)).transpose(0, 1).transpose(0, 1))


def test_concatenation_offsets_and_frozen_reasons():
    model = _Concat().eval()
    layout = group_layout(model, "channel", list(prunable_parameters(model)), torch.zeros(2, 3, 4, 4))
    a, b = layout.families["a"], layout.families["b"]
    assert [(m.param, m.dim, m.base, m.span) for m in a.members] == [("a.weight", 0, 0, 1), ("merge.weight", 1, 0, 1)]
    assert [(m.param, m.dim, m.base, m.span) for m in b.members] == [("b.weight", 0, 0, 1), ("merge.weight", 1, 4, 1)]
    assert layout.families["merge"].members[1].span == 16
    odd = _Odd().eval()
    frozen = {f.name: f.frozen for f in channel_families(odd, torch.zeros(2, 3, 4, 4))}
    assert "grouped convolution 'depthwise'" in frozen["a"]
    assert "'mean'" in frozen["b"] and frozen["c"] == "feeds the network's output"
    with pytest.raises(TicketlabError, match="No channel of this model can be removed safely .*'mean'"):
        group_layout(odd, "channel", list(prunable_parameters(odd)), torch.zeros(2, 3, 4, 4))


def test_an_untraceable_model_is_one_sentence_naming_the_way_out():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(TicketlabError, match="--granularity unstructured"):
        group_layout(Branchy(), "channel", ["fc.weight"], torch.zeros(2, 4))


def test_an_ignored_layer_freezes_the_channels_it_touches():
    model = create_model("lenet300", SHAPES["lenet300"], 10, seed=0)
    frozen = {f.name: f.frozen for f in channel_families(model, torch.zeros(2, *SHAPES["lenet300"]),
                                                          frozen_params=["layers.3.weight"])}
    assert frozen["layers.1"] == frozen["layers.3"] == "layers.3.weight is ignored"
    names = [n for n in prunable_parameters(model) if n != "layers.3.weight"]
    with pytest.raises(TicketlabError, match="layers.3.weight is ignored"):
        group_layout(model, "channel", names, torch.zeros(2, *SHAPES["lenet300"]))


# --- group scores by hand ---------------------------------------------------------------------------
def _tiny():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 2.0], [0.5, 0.5, 0.5]]))
        model[2].weight.copy_(torch.tensor([[3.0, 0.0], [-4.0, 1.0]]))
    return model, group_layout(model, "channel", ["0.weight", "2.weight"], torch.zeros(1, 3))


def test_magnitude_group_score_is_the_l2_norm_of_the_rows_and_columns():
    model, layout = _tiny()
    scores = magnitude_scores(model, dict(model.named_parameters()))
    family = layout.families["0"]
    # unit 0: row (1, -2, 2) and column (3, -4): sqrt(1 + 4 + 4 + 9 + 16) = sqrt(34)
    # unit 1: row (.5, .5, .5) and column (0, 1): sqrt(.75 + 1)
    expected = torch.tensor([math.sqrt(34.0), math.sqrt(1.75)], dtype=torch.float64)
    assert torch.allclose(family.scores(scores, "l2"), expected)


def test_saliency_group_scores_are_sums():
    model, layout = _tiny()
    saliency = {"0.weight": torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]]),
                "2.weight": torch.tensor([[10.0, 20.0], [30.0, 40.0]])}
    assert layout.families["0"].scores(saliency, "sum").tolist() == [1 + 2 + 3 + 10 + 30, 1 + 20 + 40]


def test_block_scores_tiles_and_exact_counts():
    family = BlockFamily(name="w", shape=(4, 2, 2), rows=2, cols=2)    # a (4, 4) matrix: 4 tiles
    values = torch.arange(16.0).view(4, 2, 2)
    assert family.scores({"w": values}, "sum").tolist() == [0 + 1 + 4 + 5, 2 + 3 + 6 + 7, 8 + 9 + 12 + 13,
                                                            10 + 11 + 14 + 15]
    layout = GroupLayout({"w": (4, 2, 2)}, {"w": family})
    mask = select_groups({"w": values}, layout, GroupTarget(per_family={"w": 1}))
    assert mask["w"].view(4, 4).tolist() == [[False] * 4, [False] * 4, [False, False, True, True],
                                             [False, False, True, True]]
    with pytest.raises(TicketlabError, match="do not tile"):
        BlockFamily(name="w", shape=(3, 4), rows=2, cols=2)


# --- selection ------------------------------------------------------------------------------------
def test_per_family_counts_ties_and_minimum():
    model, layout = _tiny()
    flat = {"0.weight": torch.ones(2, 3), "2.weight": torch.ones(2, 2)}
    mask = select_groups(flat, layout, GroupTarget(per_family={"0": 1}))
    assert mask["0.weight"].tolist() == [[True] * 3, [False] * 3]           # a tie keeps the lower index
    assert mask["2.weight"].tolist() == [[True, False], [True, False]]       # the column went with it
    with pytest.raises(TicketlabError, match="every channel"):
        select_groups(flat, layout, GroupTarget(per_family={"0": 0}))


def test_a_weight_budget_lands_at_or_just_below_and_counts_are_planned_exactly():
    model, layout = _layout("conv4")
    params = prunable_parameters(model)
    scores = magnitude_scores(model, params)
    total = layout.total_weights()
    for density in (0.5, 0.2, 0.05):
        mask = select_groups(scores, layout, GroupTarget(weights=int(density * total)), aggregate="l2")
        kept = {f.name: int(f.alive(dict(mask.items())).sum()) for f in layout}
        assert mask.num_kept() <= density * total and mask.num_kept() == layout.kept_weights(kept)
        assert all(k >= 1 for k in kept.values())
        more = dict(kept)
        grown = next(n for n, f in layout.families.items() if kept[n] < f.size)
        more[grown] += 1        # one more channel anywhere would exceed the budget only if it is the cheapest
        assert layout.kept_weights(more) > mask.num_kept()


def test_a_global_count_keeps_one_group_per_family_at_least():
    model, layout = _layout("lenet300")
    scores = magnitude_scores(model, prunable_parameters(model))
    mask = select_groups(scores, layout, GroupTarget(total=2))
    assert [int(f.alive(dict(mask.items())).sum()) for f in layout] == [1, 1]
    with pytest.raises(TicketlabError, match="one per layer"):
        select_groups(scores, layout, GroupTarget(total=1))


def test_groups_already_gone_stay_gone():
    model, layout = _layout("lenet300")
    scores = magnitude_scores(model, prunable_parameters(model))
    first = select_groups(scores, layout, GroupTarget(per_family={"layers.1": 200, "layers.3": 50}), aggregate="l2")
    reversed_scores = {n: -s for n, s in scores.items()}
    second = select_groups(reversed_scores, layout, GroupTarget(per_family={"layers.1": 100, "layers.3": 50}),
                           within=first)
    assert second.is_subset_of(first)
    with pytest.raises(TicketlabError, match="only 200 are left"):
        select_groups(scores, layout, GroupTarget(per_family={"layers.1": 201, "layers.3": 50}), within=first)


# --- compaction equals the masked model --------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("fraction", [0.7, 0.2])
def test_channel_masks_compact_to_an_equal_smaller_network(name, fraction):
    model, layout = _layout(name)
    randomise_biases_and_norms(model, torch.Generator().manual_seed(3))
    params = prunable_parameters(model)
    kept = {f.name: max(1, round(fraction * f.size)) for f in layout}
    mask = select_groups(magnitude_scores(model, params), layout, GroupTarget(per_family=kept), aggregate="l2")
    mask.apply_(model)
    x = torch.randn(16, *SHAPES[name], generator=torch.Generator().manual_seed(5))
    compacted, report = compact_model(model, x[:1])
    with torch.no_grad():
        reference, result = model(x), compacted(x)
    assert (reference - result).abs().max() <= 1e-5 * reference.abs().max()
    assert report.widths_after == kept
    assert sum(p.numel() for n, p in compacted.named_parameters() if n in params) == mask.num_kept()
    rebuilt = resize_to_state(create_model(name, SHAPES[name], 10, seed=9), compacted.state_dict())
    rebuilt.load_state_dict(compacted.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), result)


def test_custom_concat_channels_compact_at_their_offsets():
    model = _Concat().eval()
    randomise_biases_and_norms(model, torch.Generator().manual_seed(1))
    names = list(prunable_parameters(model))
    layout = group_layout(model, "channel", names, torch.zeros(2, 3, 4, 4))
    scores = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(2)) for n, p in model.named_parameters()
              if n in names}
    mask = select_groups(scores, layout, GroupTarget(per_family={"a": 2, "b": 3, "merge": 2}))
    mask.apply_(model)
    x = torch.randn(8, 3, 4, 4)
    compacted, report = compact_model(model, x[:1])
    assert compacted.merge.weight.shape == (2, 5, 1, 1) and compacted.head.weight.shape == (3, 2 * 16)
    with torch.no_grad():
        assert torch.allclose(model(x), compacted(x), rtol=1e-5, atol=1e-6)
