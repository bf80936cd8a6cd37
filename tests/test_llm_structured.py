"""Structured one-shot pruning of transformers: heads and MLP channels chosen by a calibrated group
score, the reading layer refit by least squares, exact per-block counts, the same result streamed,
and every combination that cannot apply refused in one sentence before anything is written."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from ticketlab.cli import main  # noqa: E402
from ticketlab.errors import TicketlabError  # noqa: E402
from ticketlab.llm.structured import kept_groups, least_squares_refit  # noqa: E402
from ticketlab.masks import Mask  # noqa: E402
from ticketlab.structure.transformers import transformer_layout  # noqa: E402

from llm_assets import llm_assets  # noqa: E402,F401
from test_llm_stream import _tensors, sharded_llama  # noqa: E402,F401


def _prune(assets, out, *extra, model=None) -> dict:
    argv = ["llm", "prune", "--model", str(model or assets.llama_dir), "--method", "wanda", "--calib",
            str(assets.text_path), "--nsamples", "4", "--seqlen", "16", "--calib-batch-size", "2", "--device", "cpu",
            "--quiet", "--out", str(out), *extra]
    assert main(argv) == 0
    return json.loads((out / "pruning_report.json").read_text())


# --- the pieces by hand ---------------------------------------------------------------------------------
def test_the_refit_is_the_least_squares_solution_on_the_kept_columns():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)        # tokens x inputs
    w = torch.randn(3, 6, generator=g, dtype=torch.float64)
    kept = torch.tensor([True, False, True, True, False, True])
    refit = least_squares_refit(w.float(), (x.T @ x).float(), kept, percdamp=0.0).double()
    target = x @ w.T                                                    # what the dense layer computes
    solution = torch.linalg.lstsq(x[:, kept], target).solution.T       # min ‖X_K Ŵᵀ − X Wᵀ‖
    assert torch.allclose(refit[:, kept], solution, rtol=1e-4, atol=1e-4)
    assert torch.all(refit[:, ~kept] == 0)
    masked = w * kept
    assert ((x @ refit.T - target).square().sum()) < ((x @ masked.T - target).square().sum())


@pytest.mark.parametrize("sparsity, expected", [(0.5, {"a": 2, "b": 3}), (0.25, {"a": 3, "b": 5}),
                                                (0.9, {"a": 1, "b": 1})])
def test_each_family_keeps_the_rounded_fraction_and_never_less_than_one(sparsity, expected):
    class Family:
        def __init__(self, name, size):
            self.name, self.size, self.minimum = name, size, 1

    assert kept_groups([Family("a", 4), Family("b", 6)], sparsity) == expected


# --- end to end ------------------------------------------------------------------------------------------
def _alive(directory, units):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(directory))
    mask = Mask.load(directory / "masks.safetensors")
    layout = transformer_layout(model, units, list(mask))
    return {f.name: int(f.alive(dict(mask.items())).sum()) for f in layout}, mask


def test_half_the_heads_and_channels_of_every_block_go_and_the_readers_are_refit(llm_assets, tmp_path):
    refit = _prune(llm_assets, tmp_path / "lsq", "--sparsity", "0.5", "--granularity", "channel+head")
    plain = _prune(llm_assets, tmp_path / "none", "--sparsity", "0.5", "--granularity", "channel+head",
                   "--reconstruct", "none")
    alive, mask = _alive(tmp_path / "lsq", ("channel", "head"))
    assert alive == {"model.layers.0.attn": 2, "model.layers.0.mlp": 32, "model.layers.1.attn": 2,
                     "model.layers.1.mlp": 32}
    assert mask.density() == pytest.approx(0.5)
    plain_mask = Mask.load(tmp_path / "none" / "masks.safetensors")
    first = [n for n in mask if n.startswith("model.layers.0.")]      # block 0 sees the same inputs either way
    assert all(torch.equal(mask[n], plain_mask[n]) for n in first)
    errors = {(layer["name"], run): layer["reconstruction_error"] for run, report in (("lsq", refit), ("none", plain))
              for layer in report["layers"]}
    for block in (0, 1):
        for reader in ("self_attn.o_proj", "mlp.down_proj"):
            name = f"model.layers.{block}.{reader}"
            assert errors[(name, "lsq")] < errors[(name, "none")], name
    readers = [layer for layer in refit["layers"] if layer["refit"]]
    assert {layer["name"].rsplit(".", 1)[1] for layer in readers} == {"o_proj", "down_proj"}
    assert refit["config"]["granularity"] == "channel+head"


def test_streaming_a_structured_prune_equals_the_in_memory_path(sharded_llama, llm_assets, tmp_path):
    _prune(llm_assets, tmp_path / "memory", "--sparsity", "0.25", "--granularity", "head", model=sharded_llama)
    _prune(llm_assets, tmp_path / "stream", "--sparsity", "0.25", "--granularity", "head", "--stream",
           model=sharded_llama)
    memory, stream = _tensors(tmp_path / "memory"), _tensors(tmp_path / "stream")
    assert set(memory) == set(stream) and all(torch.equal(memory[n], stream[n]) for n in memory)


@pytest.mark.parametrize("extra, fragment", [
    (["--method", "sparsegpt", "--sparsity", "0.5", "--granularity", "head"], "sparsegpt reconstructs single weights"),
    (["--sparsity", "0.5", "--granularity", "head", "--pattern", "2:4"], "two granularities"),
    (["--granularity", "channel"], "needs --sparsity"),
    (["--sparsity", "0.5", "--granularity", "head", "--reconstruct", "exact"], "--reconstruct"),
    (["--sparsity", "0.5", "--granularity", "block:5x5"], "do not tile"),
    (["--sparsity", "0.5", "--granularity", "channel", "--exclude", "down_proj"], "not a pruning target"),
])
def test_what_structured_pruning_cannot_do_is_one_sentence(llm_assets, tmp_path, capsys, extra, fragment):
    out = tmp_path / "out"
    argv = ["llm", "prune", "--model", str(llm_assets.llama_dir), "--calib", str(llm_assets.text_path),
            "--nsamples", "2", "--seqlen", "16", "--quiet", "--out", str(out), *extra]
    if "--method" not in extra:
        argv += ["--method", "wanda"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_library_config_refuses_a_structured_pattern():
    from ticketlab.llm.config import OneShotConfig

    with pytest.raises(TicketlabError, match="contradicts"):
        OneShotConfig(method="wanda", pattern="2:4", granularity="4:8")


def test_a_wanda_group_score_is_the_sum_of_its_weights_wanda_scores_by_hand():
    """One MLP channel of a tiny LLaMA block: its gate and up rows scored with the block input's norms,
    its down column with the channel's own norm, summed (what `structured` states)."""
    from types import SimpleNamespace

    from ticketlab.llm.adapters import find_blocks, find_targets
    from ticketlab.llm.structured import group_scores
    from llm_assets import make_llama

    model = make_llama(64)
    path, blocks = find_blocks(model)
    layers = [t for t in find_targets(model, path, blocks) if t.block == 0]
    g = torch.Generator().manual_seed(0)
    norms = {t.name: torch.rand(t.in_features, generator=g) + 0.5 for t in layers}     # Σ_t x_tj² per input
    hooks = SimpleNamespace(accumulators={t.name: SimpleNamespace(statistics=lambda n=norms[t.name]: SimpleNamespace(
        norms=lambda: n)) for t in layers})
    scores = group_scores(layers, hooks, "wanda")
    layout = transformer_layout(model, ("channel",), [t.parameter for t in layers])
    mlp = layout.families["model.layers.0.mlp"]
    modules = {t.name.rsplit(".", 1)[1]: t for t in layers}
    c, w = 5, {name: t.module.weight.detach() for name, t in modules.items()}
    by_hand = sum(float((w[n][c].abs() * norms[modules[n].name].sqrt()).sum()) for n in ("gate_proj", "up_proj"))
    by_hand += float((w["down_proj"][:, c].abs() * norms[modules["down_proj"].name][c].sqrt()).sum())
    assert float(mlp.scores(scores, "sum")[c]) == pytest.approx(by_hand, rel=1e-5)


def test_owl_gives_each_block_its_own_share_of_heads_and_channels(llm_assets, tmp_path):
    report = _prune(llm_assets, tmp_path / "owl", "--sparsity", "0.5", "--granularity", "channel",
                    "--layer-sparsity", "owl", "--owl-lambda", "0.2")
    per_block = {}
    for layer in report["layers"]:
        if layer["name"].endswith("down_proj"):
            per_block[layer["block"]] = layer["target_sparsity"]
    assert len(set(per_block.values())) == 2 and sum(per_block.values()) / 2 == pytest.approx(0.5, abs=1e-6)
    alive, _ = _alive(tmp_path / "owl", ("channel",))
    for block, sparsity in per_block.items():
        assert alive[f"model.layers.{block}.mlp"] == round((1 - sparsity) * 64)
