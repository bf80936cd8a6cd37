"""Mask overlap: Jaccard and Hamming on hand-made masks, path resolution, `ticketlab masks compare`,
and the overlap panels of `report` (IMP) and `compare`."""

import json
from pathlib import Path

import pytest
import torch

from ticketlab.analysis.mask_files import imp_mask_paths, imp_run_overlap, load_mask, resolve_mask_path
from ticketlab.analysis.overlap import compare_masks, layer_overlap, overlap_matrix
from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.experiments.compare import CompareConfig, plot_compare
from ticketlab.lottery import IMPConfig, run_imp
from ticketlab.masks import Mask
from ticketlab.report import plot_report
from ticketlab.train import TrainConfig


def _mask(**layers):
    return Mask({name: torch.tensor(values, dtype=torch.bool) for name, values in layers.items()})


#  w: positions 0..7; A keeps {0, 1, 4}, B keeps {0, 2, 4}: both 2, union 4, differ at 1 and 2
#  v: A keeps all 3 positions, B none: both 0, union 3, differ at 3
A = _mask(w=[[1, 1, 0, 0], [1, 0, 0, 0]], v=[1, 1, 1])
B = _mask(w=[[1, 0, 1, 0], [1, 0, 0, 0]], v=[0, 0, 0])


def test_jaccard_and_hamming_per_layer_and_overall():
    result = compare_masks(A, B)
    w, v, overall = result.layers["w"], result.layers["v"], result.overall
    assert (w.both, w.either, w.jaccard, w.hamming, w.hamming_fraction) == (2, 4, 0.5, 2, 0.25)
    assert (v.both, v.either, v.jaccard, v.hamming, v.hamming_fraction) == (0, 3, 0.0, 3, 1.0)
    # pooled over positions, not a mean of the layers' ratios: 2 / 7, not (0.5 + 0) / 2
    assert (overall.positions, overall.both, overall.either, overall.hamming) == (11, 2, 7, 5)
    assert overall.jaccard == pytest.approx(2 / 7) and overall.hamming_fraction == pytest.approx(5 / 11)
    assert (overall.density_a, overall.density_b) == (pytest.approx(6 / 11), pytest.approx(3 / 11))
    # random masks: E|A∩B| = 3·3/8 in w, 0 in v; overall 1.125 / (6 + 3 − 1.125) = 1/7
    assert w.chance_jaccard == pytest.approx(1.125 / 4.875)
    assert overall.chance_jaccard == pytest.approx(1 / 7)
    assert list(result.to_json()["layers"]) == ["w", "v"]


def test_empty_union_counts_as_identical_and_identity_is_jaccard_one():
    empty = layer_overlap(torch.zeros(5, dtype=torch.bool), torch.zeros(5, dtype=torch.bool))
    assert (empty.jaccard, empty.hamming, empty.hamming_fraction, empty.chance_jaccard) == (1.0, 0, 0.0, 1.0)
    one = layer_overlap(torch.zeros(5, dtype=torch.bool), torch.tensor([0, 0, 1, 0, 0], dtype=torch.bool))
    assert (one.jaccard, one.hamming) == (0.0, 1)
    same = compare_masks(A, A).overall
    assert (same.jaccard, same.hamming) == (1.0, 0)
    assert compare_masks(B, A).overall.jaccard == compare_masks(A, B).overall.jaccard


@pytest.mark.parametrize("other, fragment", [
    (_mask(w=[[1, 0, 1, 0], [1, 0, 0, 0]]), "mask A has layer 'v', which mask B lacks"),
    (_mask(w=[[1, 0, 1, 0], [1, 0, 0, 0]], v=[1, 1, 1], u=[1]), "mask B has layer 'u', which mask A lacks"),
    (_mask(w=[[1, 0], [1, 0], [0, 0], [0, 1]], v=[0, 0, 0]), "layer 'w' has shape (2, 4) in mask A but (4, 2)"),
])
def test_layout_mismatch_is_one_sentence_naming_the_first_difference(other, fragment):
    with pytest.raises(TicketlabError) as info:
        compare_masks(A, other)
    message = str(info.value)
    assert fragment in message and "\n" not in message and message.endswith(".")


def test_pairwise_matrix_is_symmetric_with_hand_computed_cells():
    c = _mask(w=[[0, 0, 0, 0], [0, 0, 0, 1]], v=[1, 0, 0])
    matrix = overlap_matrix({"a": A, "b": B, "c": c})
    jaccard = matrix.values("jaccard")
    assert matrix.labels == ("a", "b", "c")
    assert [jaccard[i][i] for i in range(3)] == [1.0, 1.0, 1.0]
    assert jaccard[0][1] == jaccard[1][0] == pytest.approx(2 / 7)
    assert jaccard[0][2] == pytest.approx(1 / 7)   # shares v[0] only; union {w0, w1, w4, w7, v0, v1, v2}
    assert jaccard[1][2] == pytest.approx(0.0)     # union 5, nothing shared
    assert matrix.cells[1][0].kept_a == B.num_kept() and matrix.cells[0][1].kept_a == A.num_kept()
    assert matrix.values("hamming_fraction")[1][2] == pytest.approx(5 / 11)
    assert matrix.mean_off_diagonal() == pytest.approx((2 / 7 + 1 / 7) / 3)
    assert overlap_matrix({"only": A}).mean_off_diagonal() is None
    with pytest.raises(TicketlabError, match="Unknown overlap metric"):
        matrix.values("cosine")


def test_paths_resolve_to_files_and_unit_directories(tmp_path):
    cell = tmp_path / "run" / "seed-0" / "round-01"
    A.save(cell / "mask.safetensors")
    assert resolve_mask_path(cell) == cell / "mask.safetensors"
    assert resolve_mask_path(cell / "mask.safetensors") == cell / "mask.safetensors"
    B.save(cell / "final_mask.safetensors")  # a RigL / SET cell: its final mask wins
    assert resolve_mask_path(cell) == cell / "final_mask.safetensors"
    assert compare_masks(load_mask(cell), B).overall.hamming == 0
    A.save(tmp_path / "llm" / "masks.safetensors")  # a one-shot LLM output directory
    assert compare_masks(load_mask(tmp_path / "llm"), A).overall.hamming == 0
    with pytest.raises(TicketlabError, match="does not exist"):
        resolve_mask_path(tmp_path / "nothing")
    with pytest.raises(TicketlabError, match=r"holds no .*e\.g\. '.*seed-0/round-01'"):
        resolve_mask_path(tmp_path / "run")
    (tmp_path / "weights.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(TicketlabError, match="not a readable"):
        load_mask(tmp_path / "weights.safetensors")


def _cli(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_masks_compare_table_and_json(tmp_path, capsys):
    A.save(tmp_path / "a" / "mask.safetensors")
    B.save(tmp_path / "b.safetensors")
    code, out, err = _cli(["masks", "compare", str(tmp_path / "a"), str(tmp_path / "b.safetensors")], capsys)
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split()[:1] in (["w"], ["v"], ["overall"])}
    assert rows["w"][5:] == ["0.5000", "0.2308", "2", "25.00"]
    assert rows["overall"][4:] == ["2", "0.2857", "0.1429", "5", "45.45"]
    code, out, err = _cli(["masks", "compare", str(tmp_path / "a"), str(tmp_path / "b.safetensors"), "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["a"].endswith("mask.safetensors")
    assert data["layers"]["v"]["hamming"] == 3 and data["overall"]["jaccard"] == pytest.approx(2 / 7)


def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    A.save(tmp_path / "a.safetensors")
    _mask(w=[[1, 0], [1, 0], [0, 0], [0, 1]], v=[1, 1, 1]).save(tmp_path / "other_model.safetensors")
    before = sorted(tmp_path.rglob("*"))
    for argv, fragment in [
        ([str(tmp_path / "a.safetensors"), str(tmp_path / "missing")], "does not exist"),
        ([str(tmp_path / "a.safetensors"), str(tmp_path / "other_model.safetensors")], "cannot be compared"),
        ([str(tmp_path / "a.safetensors"), str(tmp_path)], "holds no"),
        ([str(tmp_path / "a.safetensors")], "Missing argument"),
    ]:
        code, out, err = _cli(["masks", "compare", *argv], capsys)
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert "Traceback" not in err and out == ""
    assert sorted(tmp_path.rglob("*")) == before


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory):
    """A tiny IMP run: 2 seeds, rounds 0..2, a random-mask control (about a second)."""
    from conftest import make_splits

    config = IMPConfig(model="lenet300", data="toy", rounds=2, rate=0.5, controls=("random",), seeds=(0, 1),
                       train=TrainConfig(steps="1ep", batch_size=60, eval_every="2it", lr=5e-3))
    out = tmp_path_factory.mktemp("overlap") / "run"
    return out, run_imp(config, out, data=make_splits())


def test_imp_run_overlap_reads_the_masks_of_the_run(imp_run):
    out, _ = imp_run
    paths = imp_mask_paths(out)
    assert list(paths) == [0, 1] and list(paths[0]) == [0, 1, 2]
    overlap = imp_run_overlap(out)
    masks = {(s, r): Mask.load(p) for s, per in paths.items() for r, p in per.items()}
    assert overlap.rounds == [0, 1, 2] and overlap.consecutive[0] is None
    for i in (1, 2):  # IMP only removes weights: consecutive Jaccard = density ratio
        ratio = masks[0, i].num_kept() / masks[0, i - 1].num_kept()
        assert overlap.consecutive[i] == pytest.approx(ratio)
        assert overlap.between_seeds[i] == pytest.approx(compare_masks(masks[0, i], masks[1, i]).overall.jaccard)
    assert overlap.between_seeds[0] == 1.0 and overlap.densities[0] == 1.0
    assert overlap.matrix.labels == ("seed 0", "seed 1", "seed 0 random") and "round 2" in overlap.matrix_title


def test_report_adds_the_overlap_panels_only_with_masks(imp_run, tmp_path):
    import matplotlib.image

    out, summary = imp_run
    with_overlap = plot_report(summary, tmp_path / "with.png", run_dir=out)
    without = plot_report(summary, tmp_path / "without.png")
    assert matplotlib.image.imread(with_overlap).shape[0] > 1.8 * matplotlib.image.imread(without).shape[0]
    dense_only = tmp_path / "dense"
    round0 = Path("seed-0") / "round-00" / "mask.safetensors"
    Mask.load(out / round0).save(dense_only / round0)
    assert imp_run_overlap(dense_only) is None and imp_run_overlap(tmp_path / "nothing") is None
    skipped = plot_report(summary, tmp_path / "skipped.png", run_dir=dense_only)
    assert matplotlib.image.imread(skipped).shape == matplotlib.image.imread(without).shape


def test_compare_plot_draws_one_heatmap_per_density(tmp_path):
    import matplotlib.image

    A.save(tmp_path / "a.safetensors")
    B.save(tmp_path / "b.safetensors")
    rows = [{"method": m, "density": 0.5, "test_accuracy": 90.0, "test_accuracy_std": 0.0} for m in ("snip", "rigl")]
    config = CompareConfig(methods=("snip", "rigl"), densities=(0.5,), data="digits")
    plain = plot_compare(rows, config, tmp_path / "plain.png")
    masks = {0.5: {"snip": tmp_path / "a.safetensors", "rigl": tmp_path / "b.safetensors"}}
    panels = plot_compare(rows, config, tmp_path / "panels.png", masks=masks)
    assert matplotlib.image.imread(panels).shape[0] > 1.8 * matplotlib.image.imread(plain).shape[0]
