"""Runs compared at the same number of kept weights (`ticketlab report --at-kept`): the log-linear
interpolation on hand-made points, the counts read from mask files, and a tiny IMP run whose
rounds give the golden values."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.kept import KeptRun, SeedCurve, format_at_kept, interpolate, load_kept_run, prunable_count
from ticketlab.models import create_model
from ticketlab.targets import prunable_parameters

POINTS = ((1000.0, 90.0), (100.0, 80.0), (10.0, 50.0))
#: Prunable weights of LeNet-300-100 on 8x8 digits (64*300 + 300*100 + 100*10), counted from the model.
LENET_DIGITS = sum(p.numel() for p in prunable_parameters(create_model("lenet300", (1, 8, 8), 10, seed=0)).values())


def test_interpolation_is_linear_in_log_kept_weights_and_never_extrapolates():
    assert interpolate(POINTS, 1000) == 90.0 and interpolate(POINTS, 100) == 80.0 and interpolate(POINTS, 10) == 50.0
    assert interpolate(POINTS, math.sqrt(1000 * 100)) == pytest.approx(85.0)     # halfway in log
    assert interpolate(POINTS, 10 ** 1.25) == pytest.approx(57.5)                 # a quarter of the way from 10
    assert interpolate(POINTS, 1001) is None and interpolate(POINTS, 9.99) is None
    assert interpolate(((500.0, 70.0),), 500) == 70.0 and interpolate((), 5) is None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("kept") / "run"
    assert main(["imp", "--data", "digits", "--steps", "10it", "--rounds", "2", "--seeds", "2", "--controls", "reinit",
                 "--quiet", "--threads", "1", "--out", str(out)]) == 0
    return out


def test_counts_come_from_the_masks_and_the_rounds(tiny_run):
    assert LENET_DIGITS == 64 * 300 + 300 * 100 + 100 * 10
    assert prunable_count(tiny_run) == LENET_DIGITS
    run = load_kept_run(tiny_run)
    summary = json.loads((tiny_run / "summary.json").read_text())
    ticket, reinit = run.curves
    assert (ticket.name, reinit.name, run.seeds) == ("ticket", "reinit", 2)
    assert [k for k, _ in ticket.points[0]] == pytest.approx([e["density"] * LENET_DIGITS for e in summary["rounds"]])
    assert len(reinit.points[1]) == 2          # controls start at round 1
    round_1 = summary["rounds"][1]
    kept = round_1["density"] * LENET_DIGITS
    table = format_at_kept([run], [kept, 60_000]).splitlines()
    row, gap_row = [line for line in table if line.lstrip().startswith(f"{kept:,.0f}")]  # accuracy, then gap
    mean, std = round_1["test_accuracy"], round_1["test_accuracy_std"]
    assert f"{mean:.2f} ± {std:.2f}" in row
    gaps = [round_1["seeds"][s]["test_accuracy"] - round_1["controls"]["reinit"]["seeds"][s]["test_accuracy"]
            for s in ("0", "1")]
    assert f"{statistics.fmean(gaps):.2f} ± {statistics.stdev(gaps):.2f}" in gap_row
    assert "–" in [line for line in table if line.lstrip().startswith("60,000")][0]  # above dense


def test_report_at_kept_prints_both_tables_and_writes_the_plot(tiny_run, tmp_path, capsys):
    png = tmp_path / "kept.png"
    assert main(["report", str(tiny_run), str(tiny_run), "--at-kept", "40000,30000", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy (%) at the same number of kept weights" in out and "gap of the ticket" in out
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("counts, sentence", [
    ("", "--at-kept needs at least one value."),
    ("abc", "Cannot read --at-kept 'abc': give numbers separated by commas (digits 0-9)."),
    ("0", "A count in --at-kept must be at least 1, not 0."),
    ("5000,-1", "A count in --at-kept must be at least 1, not -1."),
    ("inf", "A count in --at-kept must be a finite number, not inf."),
    ("nan", "A count in --at-kept must be a finite number, not nan.")])
def test_bad_counts_are_one_sentence(tiny_run, capsys, counts, sentence):
    assert main(["report", str(tiny_run), "--at-kept", counts]) == 2
    err = capsys.readouterr().err
    assert sentence in err and "Traceback" not in err


def test_a_run_without_masks_is_one_sentence(tmp_path):
    with pytest.raises(TicketlabError, match="has no mask file"):
        prunable_count(tmp_path)


def test_a_run_without_a_finished_round_is_one_sentence(tmp_path):
    from safetensors.torch import save_file
    import torch

    (tmp_path / "seed-0" / "round-01").mkdir(parents=True)
    save_file({"w": torch.ones(3, 4)}, str(tmp_path / "seed-0" / "round-01" / "mask.safetensors"))
    (tmp_path / "summary.json").write_text(json.dumps({"kind": "imp", "seeds": [0], "controls": [], "rounds": []}))
    assert prunable_count(tmp_path) == 12
    with pytest.raises(TicketlabError, match="^Run 'empty' has no finished round to show.$"):
        load_kept_run(tmp_path, "empty")


def test_a_control_gap_pairs_seeds():
    ticket = SeedCurve("ticket", {0: ((100.0, 90.0), (10.0, 80.0)), 1: ((100.0, 92.0), (10.0, 84.0))})
    control = SeedCurve("reinit", {0: ((100.0, 85.0), (10.0, 70.0)), 1: ((100.0, 91.0), (10.0, 80.0))})
    table = format_at_kept([KeptRun("r", 100, (ticket, control))], [10.0])
    gap_line = [line for line in table.splitlines() if line.lstrip().startswith("10")][-1]
    assert "+7.00 ± 4.24" in gap_line           # seed gaps 10 and 4: mean 7, sample std 4.243


def test_a_prune_init_run_reads_its_method_and_dense_baseline(tmp_path):
    out = tmp_path / "pi"
    assert main(["prune-init", "--data", "digits", "--method", "snip", "--density", "0.2,0.05", "--steps", "10it",
                 "--seeds", "2", "--quiet", "--threads", "1", "--out", str(out)]) == 0
    run = load_kept_run(out)
    summary = json.loads((out / "summary.json").read_text())
    assert [c.name for c in run.curves] == ["snip"] and run.prunable == LENET_DIGITS
    assert sorted(k for k, _ in run.curves[0].points[0]) == pytest.approx(sorted(
        e["density"] * LENET_DIGITS for e in summary["rounds"]))
    assert f"{summary['dense_test_accuracy']:.2f} ({LENET_DIGITS:,})" in format_at_kept([run], [5000])
