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
from ticketlab.kept import SeedCurve, format_at_kept, interpolate, load_kept_run, prunable_count

POINTS = ((1000.0, 90.0), (100.0, 80.0), (10.0, 50.0))


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
    # LeNet-300-100 on 8x8 digits: 64*300 + 300*100 + 100*10 prunable weights
    assert prunable_count(tiny_run) == 50_200
    run = load_kept_run(tiny_run)
    summary = json.loads((tiny_run / "summary.json").read_text())
    ticket, reinit = run.curves
    assert (ticket.name, reinit.name, run.seeds) == ("ticket", "reinit", 2)
    assert [k for k, _ in ticket.points[0]] == pytest.approx([e["density"] * 50_200 for e in summary["rounds"]])
    assert len(reinit.points[1]) == 2          # controls start at round 1
    round_1 = summary["rounds"][1]
    kept = round_1["density"] * 50_200
    table = format_at_kept([run], [kept, 60_000])
    row = next(line for line in table.splitlines() if line.lstrip().startswith(f"{kept:,.0f}"))
    mean, std = round_1["test_accuracy"], round_1["test_accuracy_std"]
    assert f"{mean:.2f} ± {std:.2f}" in row
    gaps = [round_1["seeds"][s]["test_accuracy"] - round_1["controls"]["reinit"]["seeds"][s]["test_accuracy"]
            for s in ("0", "1")]
    gap_row = [line for line in table.splitlines() if line.lstrip().startswith(f"{kept:,.0f}")][1]
    assert f"{statistics.fmean(gaps):.2f} ± {statistics.stdev(gaps):.2f}" in gap_row
    assert "–" in [line for line in table.splitlines() if line.lstrip().startswith("60,000")][0]  # above dense


def test_report_at_kept_prints_both_tables_and_writes_the_plot(tiny_run, tmp_path, capsys):
    png = tmp_path / "kept.png"
    assert main(["report", str(tiny_run), str(tiny_run), "--at-kept", "40000,30000", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy (%) at the same number of kept weights" in out and "gap of the ticket" in out
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("counts", ["", "abc", "0", "5000,-1", "inf", "nan"])
def test_bad_counts_are_one_sentence(tiny_run, capsys, counts):
    assert main(["report", str(tiny_run), "--at-kept", counts]) == 2
    assert "Cannot read --at-kept" in capsys.readouterr().err


def test_a_run_without_masks_is_one_sentence(tmp_path):
    with pytest.raises(TicketlabError, match="has no mask file"):
        prunable_count(tmp_path)


def test_a_control_gap_pairs_seeds():
    ticket = SeedCurve("ticket", {0: ((100.0, 90.0), (10.0, 80.0)), 1: ((100.0, 92.0), (10.0, 84.0))})
    control = SeedCurve("reinit", {0: ((100.0, 85.0), (10.0, 70.0)), 1: ((100.0, 91.0), (10.0, 80.0))})
    from ticketlab.kept import KeptRun

    table = format_at_kept([KeptRun("r", 100, (ticket, control))], [10.0])
    gap_line = [line for line in table.splitlines() if line.lstrip().startswith("10")][-1]
    assert "+7.00 ± 4.24" in gap_line           # seed gaps 10 and 4: mean 7, sample std 4.243


def test_a_prune_init_run_reads_its_method_and_dense_baseline(tmp_path):
    out = tmp_path / "pi"
    assert main(["prune-init", "--data", "digits", "--method", "snip", "--density", "0.2,0.05", "--steps", "10it",
                 "--seeds", "2", "--quiet", "--threads", "1", "--out", str(out)]) == 0
    run = load_kept_run(out)
    summary = json.loads((out / "summary.json").read_text())
    assert [c.name for c in run.curves] == ["snip"] and run.prunable == 50_200
    assert sorted(k for k, _ in run.curves[0].points[0]) == pytest.approx(sorted(
        e["density"] * 50_200 for e in summary["rounds"]))
    assert f"{summary['dense_test_accuracy']:.2f} (50,200)" in format_at_kept([run], [5000])
