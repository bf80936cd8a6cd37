"""Structured sparsity through the experiments: IMP, pruning at init and compare at the block and
channel granularities — exact group counts per round, masks that only shrink, controls that keep
the granularity, resume and stacked training unchanged, export that removes the channels, and every
refusal as one sentence before anything is written."""

from __future__ import annotations

import json

import pytest
import torch

from ticketlab.cli import main
from ticketlab.experiments.compare import CompareConfig, run_compare
from ticketlab.experiments.sparse import PruneInitConfig, run_sparse
from ticketlab.lottery import IMPConfig, run_imp
from ticketlab.masks import Mask
from ticketlab.models import create_model
from ticketlab.structure.layouts import group_layout
from ticketlab.targets import prunable_parameters
from ticketlab.train import TrainConfig

from conftest import Interrupt, strip_times

FAST = TrainConfig(steps="2ep", batch_size=40, eval_every="3it", lr=5e-3)


def _layout(granularity: str = "channel"):
    model = create_model("lenet300", (12,), 3, seed=0)
    return group_layout(model, granularity, list(prunable_parameters(model)), torch.zeros(2, 12))


def _alive(mask: Mask, layout) -> dict[str, int]:
    return {f.name: int(f.alive(dict(mask.items())).sum()) for f in layout}


def _masks(root, seed=0, rounds=3):
    return [Mask.load(root / f"seed-{seed}" / f"round-{r:02d}" / "mask.safetensors") for r in range(rounds)]


# --- IMP ------------------------------------------------------------------------------------------------
def test_channel_imp_prunes_a_fraction_of_the_remaining_channels_and_controls_keep_them(tmp_path, toy_splits):
    config = IMPConfig(model="lenet300", data="toy", rounds=2, rate=0.5, controls=("reinit", "random", "shuffle"),
                       seeds=(0,), train=FAST, granularity="channel")
    summary = run_imp(config, tmp_path / "run", data=toy_splits)
    layout = _layout()
    masks = _masks(tmp_path / "run")
    counts = [_alive(m, layout) for m in masks]
    assert counts == [{"layers.1": 300, "layers.3": 100}, {"layers.1": 150, "layers.3": 50},
                      {"layers.1": 75, "layers.3": 25}]
    assert masks[2].is_subset_of(masks[1]) and masks[1].is_subset_of(masks[0])
    # a removed channel is a zero row and a zero column: 12·75 + 75·25 + 25·3 weights are left
    assert masks[2].num_kept() == 12 * 75 + 75 * 25 + 25 * 3
    assert summary["rounds"][2]["density"] == pytest.approx(masks[2].density())
    controls = tmp_path / "run" / "seed-0" / "round-02" / "controls"
    for name in ("random", "shuffle"):
        control = Mask.load(controls / name / "mask.safetensors")
        assert _alive(control, layout) == counts[2] and control != masks[2]
        assert control.layer_densities() == masks[2].layer_densities()
        rows_kept = control["layers.1.weight"].any(dim=1)
        assert torch.equal(control["layers.1.weight"], rows_kept[:, None].expand(-1, 12))   # whole rows
    # every kept channel of round 1 had a larger L2 norm (row and column) than every pruned one
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "run" / "seed-0" / "round-00" / "weights.safetensors"))
    norms = (weights["layers.1.weight"].square().sum(dim=1) + weights["layers.3.weight"].square().sum(dim=0)).sqrt()
    kept = masks[1]["layers.1.weight"].any(dim=1)
    assert norms[kept].min() >= norms[~kept].max()


def test_a_target_density_is_planned_exactly_at_channel_granularity(tmp_path, toy_splits):
    config = IMPConfig(model="lenet300", data="toy", rounds=2, target_density=0.2, controls=(), seeds=(0,),
                       train=FAST, granularity="channel")
    summary = run_imp(config, tmp_path / "run", data=toy_splits)
    final = summary["rounds"][-1]["density"]
    assert final <= 0.2 and final > 0.15


def test_block_imp_keeps_whole_tiles_and_the_output_layer_at_half_rate(tmp_path, toy_splits):
    config = IMPConfig(model="lenet300", data="toy", rounds=1, rate=0.5, controls=("random",), seeds=(0,),
                       train=FAST, granularity="block:1x4")
    run_imp(config, tmp_path / "run", data=toy_splits)
    mask = _masks(tmp_path / "run", rounds=2)[1]
    for name, tensor in mask.items():
        tiles = tensor.reshape(tensor.shape[0], -1, 4)
        assert torch.equal(tiles.all(dim=2), tiles.any(dim=2)), name      # every tile all kept or all gone
    assert mask["layers.5.weight"].sum() == 300 - round(0.25 * 300 / 4) * 4   # output: 25% of its 75 tiles


class _Counter:
    def __init__(self, stop_at):
        self.calls, self.stop_at = 0, stop_at

    def __call__(self, description, total, initial):
        counter = self

        class Bar:
            def update(self, n):
                counter.calls += 1
                if counter.calls == counter.stop_at:
                    raise Interrupt

            def close(self):
                pass

        return Bar()


def test_an_interrupted_channel_run_resumes_to_the_same_files(tmp_path, toy_splits):
    config = IMPConfig(model="lenet300", data="toy", rounds=2, rate=0.5, controls=("random",), seeds=(0, 1),
                       train=FAST, granularity="channel")
    reference = run_imp(config, tmp_path / "ref", data=toy_splits)
    with pytest.raises(Interrupt):
        run_imp(config, tmp_path / "run", data=toy_splits, progress=_Counter(19))
    resumed = run_imp(config, tmp_path / "run", data=toy_splits)
    assert strip_times(resumed) == strip_times(reference)
    for seed in (0, 1):
        for a, b in zip(_masks(tmp_path / "ref", seed), _masks(tmp_path / "run", seed)):
            assert a == b


def test_channel_rounds_that_would_empty_a_layer_are_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["imp", "--data", "digits", "--model", "lenet300", "--granularity", "channel", "--rounds", "12",
                 "--rate", "0.5", "--steps", "5it", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "would remove every channel of 'layers.3'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


# --- pruning at init -------------------------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("method", ["magnitude", "snip", "synflow", "random"])
def test_prune_init_at_channel_granularity_counts_weights(tmp_path, toy_splits, scope, method):
    config = PruneInitConfig(method=method, data="toy", densities=(0.3,), scope=scope, seeds=(0,),
                             controls=("shuffle",), train=TrainConfig(steps="3it", batch_size=40),
                             synflow_iterations=5, granularity="channel")
    summary = run_sparse(config, tmp_path / "run", data=toy_splits)
    unit = tmp_path / "run" / "seed-0" / "density-0.3"
    mask = Mask.load(unit / "mask.safetensors")
    layout = _layout()
    total = layout.total_weights()
    assert mask.num_kept() <= round(0.3 * total) and summary["rounds"][0]["density"] == mask.density()
    alive = _alive(mask, layout)
    assert layout.kept_weights(alive) == mask.num_kept()
    if scope == "layer":   # one common fraction of every layer's channels, as close under 0.3 as it gets
        assert alive == layout.uniform_counts(0.3)
    shuffled = Mask.load(unit / "controls" / "shuffle" / "mask.safetensors")
    assert _alive(shuffled, layout) == alive and shuffled.num_kept() == mask.num_kept()


def test_prune_init_at_n_m_keeps_the_pattern_and_so_does_its_shuffle(tmp_path, toy_splits):
    config = PruneInitConfig(method="snip", data="toy", densities=(0.5,), seeds=(0,), controls=("shuffle",),
                             train=TrainConfig(steps="3it", batch_size=40), granularity="2:4")
    run_sparse(config, tmp_path / "run", data=toy_splits)
    unit = tmp_path / "run" / "seed-0" / "density-0.5"
    for mask in (Mask.load(unit / "mask.safetensors"), Mask.load(unit / "controls" / "shuffle" / "mask.safetensors")):
        for tensor in mask.values():
            assert torch.equal(tensor.reshape(-1, 4).sum(dim=1), torch.full((tensor.numel() // 4,), 2))


# --- compare -------------------------------------------------------------------------------------------
def test_compare_at_channel_granularity_runs_its_static_methods(tmp_path, toy_splits):
    config = CompareConfig(methods=("imp", "magnitude", "random"), densities=(0.5, 0.2), data="toy",
                           granularity="channel", train=TrainConfig(steps="6it", batch_size=40))
    table = run_compare(config, tmp_path / "cmp", data=toy_splits)
    layout = _layout()
    for row in table["rows"]:
        assert row["density"] <= row["target_density"] * 1.3
    for method in ("magnitude", "random"):
        mask = Mask.load(tmp_path / "cmp" / method / "seed-0" / "density-0.2" / "mask.safetensors")
        assert layout.kept_weights(_alive(mask, layout)) == mask.num_kept()


# --- export removes the channels ----------------------------------------------------------------------
def test_a_channel_ticket_exports_to_a_smaller_dense_network(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "deploy"
    assert main(["imp", "--data", "digits", "--model", "conv2", "--granularity", "channel", "--rounds", "1",
                 "--rate", "0.7", "--steps", "3it", "--quiet", "--controls", "none", "--out", str(run)]) == 0
    assert main(["export", str(run), "--round", "1", "--out", str(out)]) == 0
    assert "compacted" in capsys.readouterr().out
    record = json.loads((out / "ticketlab.json").read_text())
    widths = record["compaction"]["widths_after"]
    assert widths == {"features.0": round(0.3 * 64), "features.2": round(0.3 * 64), "classifier.1": round(0.3 * 256),
                      "classifier.3": round(0.3 * 256)}
    assert record["compaction"]["max_relative_difference"] <= 1e-5
    from ticketlab.deploy import load
    model = load(out, sparse=False)
    assert model.features[0].weight.shape[0] == 19 and model.classifier[1].weight.shape == (77, 19 * 16)


# --- refusals --------------------------------------------------------------------------------------------
def _refused(argv, fragment, capsys, out):
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


TRAIN = ["--data", "digits", "--steps", "5it", "--quiet"]


@pytest.mark.parametrize("argv, fragment", [
    (["sparse-train", "--method", "rigl", "--granularity", "channel", "--density", "0.2", "--steps", "400it",
      "--data", "digits", "--quiet"], "rigl drops and grows single weights"),
    (["sparse-train", "--method", "set", "--granularity", "block:4x4", "--density", "0.2", "--steps", "400it",
      "--data", "digits", "--quiet"], "set drops and grows single weights"),
    (["compare", "--methods", "imp,rigl", "--granularity", "channel", *TRAIN], "rigl drops and grows"),
    (["imp", "--granularity", "2:4", *TRAIN], "IMP cannot prune it a fraction per round"),
    (["imp", "--granularity", "head", *TRAIN], "needs attention heads"),
    (["imp", "--granularity", "channels", *TRAIN], "Cannot read --granularity"),
    (["imp", "--granularity", "block:3x3", "--model", "lenet300", *TRAIN], "do not tile"),
    (["imp", "--granularity", "channel", "--layer-rate", "output=0.1", *TRAIN], "feeds the network's output"),
    (["imp", "--granularity", "channel", "--scope", "global", "--density", "0.1", "--rounds", "2", *TRAIN],
     "--scope global"),
    (["prune-init", "--granularity", "2:4", "--density", "0.3", *TRAIN], "--density must be 0.5"),
    (["prune-init", "--granularity", "channel", "--scope", "layer", "--distribution", "erk", "--density", "0.2",
      *TRAIN], "--distribution uniform"),
    (["prune-init", "--granularity", "channel", "--density", "0.0001", "--scope", "layer", *TRAIN],
     "cannot be reached with whole groups"),
])
def test_granularities_a_run_cannot_take_are_one_sentence(argv, fragment, capsys, tmp_path):
    _refused(argv, fragment, capsys, tmp_path / "out")


def test_a_model_whose_graph_cannot_be_traced_names_the_way_out(tmp_path, capsys, monkeypatch, fresh_trust):
    (tmp_path / "cm_branchy.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Branchy(nn.Module):\n"
        "    def __init__(self, n, c):\n"
        "        super().__init__()\n"
        "        self.a, self.b = nn.Linear(n, 8), nn.Linear(8, c)\n"
        "    def forward(self, x):\n"
        "        x = x.flatten(1)\n"
        "        return self.b(torch.relu(self.a(x))) if x.sum() > 0 else self.b(self.a(x))\n\n"
        "def build(input_shape, num_classes):\n"
        "    return Branchy(int(torch.tensor(input_shape).prod()), num_classes)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _refused(["prune-init", "--model", "cm_branchy:build", "--granularity", "channel", "--density", "0.5", *TRAIN],
             "--granularity unstructured", capsys, tmp_path / "out")
