"""What finding a ticket cost: iterations per round and cumulatively, in dense-training multiples,
controls apart, in ``summary.json``, the report table and the command line."""

from __future__ import annotations

import json

import pytest

from ticketlab.cli import main
from ticketlab.lottery import IMPConfig, run_imp
from ticketlab.report import format_table, summary_problem
from ticketlab.train import TrainConfig

# 240 toy examples / batch 40 = 6 iterations per epoch; 12 iterations per training, θk at 4
TINY = TrainConfig(steps="12it", batch_size=40, eval_every="4it", lr=5e-3)


def test_costs_are_the_hand_counted_iterations(tmp_path, toy_splits):
    config = IMPConfig(model="lenet300", data="toy", rounds=2, rate=0.5, rewind="4it", controls=("reinit", "random"),
                       seeds=(0, 1), train=TINY)
    summary = run_imp(config, tmp_path / "run", data=toy_splits)
    # round 0 trains the full 12 iterations; rounds 1 and 2 train from θ4: 8 each, beside two controls of 8
    want = [  # iterations, cumulative, control iterations
        (12, 12, 0), (8, 20, 16), (8, 28, 16),
    ]
    for entry, (its, cumulative, controls) in zip(summary["rounds"], want):
        cost = entry["cost"]
        assert cost["iterations"] == its and cost["dense_trainings"] == pytest.approx(its / 12)
        assert cost["cumulative_iterations"] == cumulative
        assert cost["cumulative_dense_trainings"] == pytest.approx(cumulative / 12)
        assert cost["control_iterations"] == controls
        assert entry["iterations"] == its and all(c["iterations"] == 8 for c in entry["controls"].values())
    assert summary["rounds"][0]["cost"]["reference_iterations"] == 0
    totals = summary["cost"]
    assert (totals["dense_iterations"], totals["ticket_iterations"], totals["control_iterations"],
            totals["reference_iterations"], totals["total_iterations"]) == (12, 28, 32, 0, 60)
    assert totals["ticket_dense_trainings"] == pytest.approx(28 / 12) and totals["total_dense_trainings"] == 5.0
    assert "controls" in totals["counted"]
    table = format_table(summary)
    assert "cost (dense trainings)" in table
    rows = [line.split() for line in table.splitlines()[3:6]]  # after the title, header and rule
    assert [row[0] for row in rows] == ["0", "1", "2"]
    assert all(f"{w[1] / 12:.2f}" in row for row, w in zip(rows, want))
    assert "dense trainings of 12 iterations; controls and the dense reference cost 2.67 more" in table


def test_a_summary_without_costs_still_reads():
    entry = {"round": 0, "density": 1.0, "test_accuracy": 90.0, "test_accuracy_std": 0.0, "early_stop_iteration": 5,
             "early_stop_iteration_std": 0.0, "winning_ticket": True, "controls": {}}
    old = {"kind": "imp", "seeds": [0], "controls": [], "rounds": [entry], "dense_test_accuracy": 90.0}
    assert summary_problem(old) is None
    table = format_table(old)
    assert "cost" not in table and "90.00" in table
    malformed = {**old, "rounds": [{**entry, "cost": "cheap"}], "cost": {"dense_iterations": "x"}}
    row = format_table(malformed).splitlines()[3].split()  # after the title, header and rule
    assert summary_problem(malformed) is None and row[0] == "0" and row[-1] == "-"  # the cost cell


def _files(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_command_line_shows_the_cost_and_refuses_bad_early_bird_values(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["imp", "--data", "digits", "--steps", "6it", "--eval-every", "2it", "--rounds", "1", "--rate", "0.5",
            "--controls", "none", "--out", str(out)]
    assert main([*base, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "cost (dense trainings)" in capsys.readouterr().out
    before = _files(out)
    for value in ("0", "-1", "-0.5", "nan"):
        assert main([*base, "--quiet", "--early-bird", value]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ticketlab: error: ") and err.count("\n") == 1 and "--early-bird" in err, err
        assert _files(out) == before
    # a valid early-bird run is another configuration: refused on this directory, which stays as it was
    assert main([*base, "--quiet", "--early-bird", "0.1"]) == 2
    assert "different configuration" in capsys.readouterr().err
    assert _files(out) == before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cost"]["ticket_iterations"] == 12
