"""The one-shot pipeline: only the statistics a method needs, batched calibration, the registry,
`run_oneshot` from one config, the calibration default, dtypes."""

from __future__ import annotations

import copy
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from ticketlab.errors import TicketlabError  # noqa: E402
from ticketlab.llm import OneShotConfig, prune_model  # noqa: E402
from ticketlab.llm import stats as stats_module  # noqa: E402
from ticketlab.llm.run import CalibrationConfig, OneShotRun, default_nsamples, run_oneshot  # noqa: E402
from ticketlab.methods.oneshot import ONE_SHOT_METHODS  # noqa: E402

from llm_assets import llm_assets, make_llama  # noqa: E402,F401

VOCAB = 320


def calibration(n=6, seqlen=16, seed=0):
    return torch.randint(0, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method, kind", [("magnitude", "none"), ("wanda", "norms"), ("sparsegpt", "gram")])
def test_each_method_computes_only_the_statistics_it_needs(method, kind, monkeypatch):
    assert ONE_SHOT_METHODS[method].statistics == kind
    built = []
    real = stats_module.InputAccumulator

    class Recording(real):
        def __init__(self, features, statistic, device, rows_per_call):
            super().__init__(features, statistic, device, rows_per_call)
            built.append((statistic, self.gram is not None, self.sq_norms is not None))

    monkeypatch.setattr(stats_module, "InputAccumulator", Recording)
    report = prune_model(make_llama(VOCAB), calibration(), OneShotConfig(method, sparsity=0.5))
    assert built and all(entry == (kind, kind == "gram", kind == "norms") for entry in built)
    sources = {layer["reconstruction_error_source"] for layer in report.layers}
    assert sources == ({"gram"} if kind == "gram" else {"96 sampled tokens"})  # 6 x 16 tokens: every one kept
    assert all(0 < layer["reconstruction_error"] < 1 for layer in report.layers)


def test_shared_inputs_share_one_accumulator(monkeypatch):
    """q/k/v read one tensor and gate/up another: 4 distinct inputs per LLaMA block (+ o, down)."""
    counts = []
    real = stats_module.StatisticsHooks.remove

    def remove(self):
        counts.append(len({id(a) for a in self.accumulators.values()}))
        real(self)

    monkeypatch.setattr(stats_module.StatisticsHooks, "remove", remove)
    prune_model(make_llama(VOCAB), calibration(), OneShotConfig("sparsegpt", sparsity=0.5))
    assert counts == [4, 4]   # (q, k, v), o, (gate, up), down in each of the 2 blocks


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_batched_calibration_equals_one_sample_at_a_time(method):
    model = make_llama(VOCAB)
    one, batched = copy.deepcopy(model), copy.deepcopy(model)
    config = OneShotConfig(method, sparsity=0.5)
    a = prune_model(one, calibration(), config, batch_size=1)
    b = prune_model(batched, calibration(), config, batch_size=4)     # batches of 4 and 2
    assert a.extra["calibration_batch_size"] == 1 and b.extra["calibration_batch_size"] == 4
    for layer_a, layer_b in zip(a.layers, b.layers):
        assert layer_a["reconstruction_error"] == pytest.approx(layer_b["reconstruction_error"], rel=1e-3)
    differing = sum(int((a.masks[n] != b.masks[n]).sum()) for n in a.masks)
    assert differing <= 1e-3 * a.masks.num_total()   # float summation order may flip a near-tie


def test_default_calibration_does_not_reuse_a_short_text():
    assert default_nsamples(4594, 510) == 9
    assert default_nsamples(10**6, 2048) == 128
    assert default_nsamples(100, 510) == 1


def test_run_oneshot_writes_the_same_as_the_cli(llm_assets, tmp_path):
    method = OneShotConfig("wanda", sparsity=0.5)
    run = OneShotRun(method=method, out=str(tmp_path / "out"), model=str(llm_assets.llama_dir),
                     calibration=CalibrationConfig(text=str(llm_assets.text_path), nsamples=4, seqlen=16), device="cpu")
    result = run_oneshot(run)
    record = json.loads((tmp_path / "out" / "pruning_report.json").read_text())
    assert record["config"]["method"] == "wanda" and record["dtype"] == "float32" and record["device"] == "cpu"
    assert record["calibration"]["nsamples"] == 4 and record["calibration"]["reuse"] > 0
    assert result.report.masks.density() == pytest.approx(0.5)
    with pytest.raises(TicketlabError, match="not empty"):
        run_oneshot(run)


def test_the_calibration_default_is_capped_by_the_text(llm_assets, tmp_path):
    run = OneShotRun(method=OneShotConfig("magnitude", sparsity=0.5), out=str(tmp_path / "out"),
                     model=str(llm_assets.llama_dir), calibration=CalibrationConfig(text=str(llm_assets.text_path),
                                                                                     seqlen=64), device="cpu")
    record = run_oneshot(run).record
    assert record["calibration"]["nsamples"] < 128 and record["calibration"]["reuse"] <= 1.0


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_dtype_option(llm_assets, tmp_path, dtype):
    run = OneShotRun(method=OneShotConfig("sparsegpt", sparsity=0.5), out=str(tmp_path / "out"),
                     model=str(llm_assets.llama_dir), dtype=dtype, device="cpu",
                     calibration=CalibrationConfig(text=str(llm_assets.text_path), nsamples=4, seqlen=16))
    result = run_oneshot(run)
    saved = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert result.record["dtype"] == dtype and result.report.masks.density() == pytest.approx(0.5)
    layer = saved.model.layers[0].mlp.down_proj.weight
    assert float((layer == 0).float().mean()) == pytest.approx(0.5)


def test_bad_pipeline_configs():
    with pytest.raises(TicketlabError, match="--dtype"):
        OneShotRun(method=OneShotConfig("wanda", sparsity=0.5), out="x", dtype="float8")
    with pytest.raises(TicketlabError, match="calibration part"):
        CalibrationConfig(part="heldout")
    with pytest.raises(TicketlabError, match="--calib-batch-size"):
        CalibrationConfig(batch_size=0)


def test_owl_sparsities_by_hand():
    from ticketlab.llm.owl import outlier_ratio, owl_sparsities

    # ratios 0.1, 0.3, 0.2 -> normalised 0, 1, 0.5 -> raw S + λ - 2λ·d = 0.58, 0.42, 0.50 (S = 0.5, λ = 0.08)
    # sizes 100, 100, 200: weighted mean of raw = (58 + 42 + 100) / 400 = 0.5 -> no shift
    out = owl_sparsities({0: 0.1, 1: 0.3, 2: 0.2}, {0: 100, 1: 100, 2: 200}, 0.5, 0.08)
    assert out == pytest.approx({0: 0.58, 1: 0.42, 2: 0.50})
    # unequal sizes: raw 0.58, 0.42 with sizes 300, 100: mean 0.54 -> shift -0.04
    out = owl_sparsities({0: 0.1, 1: 0.3}, {0: 300, 1: 100}, 0.5, 0.08)
    assert out == pytest.approx({0: 0.54, 1: 0.38})
    assert (0.54 * 300 + 0.38 * 100) / 400 == pytest.approx(0.5)
    assert owl_sparsities({0: 0.2, 1: 0.2}, {0: 1, 1: 3}, 0.7, 0.08) == pytest.approx({0: 0.7, 1: 0.7})
    # mean of [1, 1, 1, 9] is 3: with M = 2 only 9 > 6 is an outlier -> 1 of 4
    assert outlier_ratio([torch.tensor([1.0, 1.0]), torch.tensor([1.0, 9.0])], 2.0) == 0.25
    with pytest.raises(TicketlabError, match="lower --owl-lambda"):
        owl_sparsities({0: 0.0, 1: 1.0}, {0: 1, 1: 1}, 0.95, 0.08)


def test_owl_prunes_outlier_heavy_blocks_less_and_keeps_the_mean():
    from ticketlab.llm.owl import owl_block_sparsity

    model = make_llama(VOCAB)
    with torch.no_grad():   # make block 1's weights heavy-tailed: many outliers
        for p in model.model.layers[1].parameters():
            if p.dim() == 2:
                p.mul_(torch.where(torch.rand(p.shape) < 0.02, torch.tensor(20.0), torch.tensor(1.0)))
    config = OneShotConfig("wanda", sparsity=0.6, layer_sparsity="owl")
    sparsity, ratios = owl_block_sparsity(copy.deepcopy(model), calibration(), config)
    assert ratios[1] > ratios[0] and sparsity[1] < sparsity[0]
    assert (sparsity[0] + sparsity[1]) / 2 == pytest.approx(0.6)   # both blocks hold the same number of weights
    report = prune_model(model, calibration(), config, block_sparsity=sparsity)
    by_block = {b: [l["sparsity"] for l in report.layers if l["block"] == b] for b in (0, 1)}
    assert all(s == pytest.approx(sparsity[0], abs=0.02) for s in by_block[0])
    assert report.overall_sparsity == pytest.approx(0.6, abs=0.01)


def test_owl_with_a_pattern_is_refused():
    with pytest.raises(TicketlabError, match="N:M pattern"):
        OneShotConfig("wanda", pattern="2:4", layer_sparsity="owl")
