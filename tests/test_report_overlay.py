"""`ticketlab report A B C`: several runs of any kind in one table and one plot; `report` on a
comparison; ``summary.csv``; spreads as the sample standard deviation (ddof = 1)."""

import json
import math

import pytest

from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.experiments.compare import CompareConfig, run_compare
from ticketlab.experiments.sparse import PruneInitConfig, run_sparse
from ticketlab.lottery import IMPConfig, run_imp
from ticketlab.plotting import tick_labels
from ticketlab.overlay import format_overlay_table, load_run, overlay_figure, unique_labels
from ticketlab.report import load_summary
from ticketlab.train import TrainConfig
from ticketlab.units.aggregate import aggregate, format_summary_csv, write_summary_files

TINY = TrainConfig(steps="20it")


def _record(acc, density=0.5):
    return {"density": density, "test_accuracy": acc, "early_stop_iteration": 10, "layer_densities": {"w": density},
            "collapsed_layers": []}


def test_spread_is_the_sample_std():
    two = aggregate({0: _record(90.0), 1: _record(92.0)})
    assert two["test_accuracy"] == 91.0 and two["test_accuracy_std"] == pytest.approx(1.41421356, abs=1e-8)
    three = aggregate({0: _record(90.0), 1: _record(92.0), 2: _record(97.0)})  # deviations -3, -1, 4
    assert three["test_accuracy_std"] == pytest.approx(math.sqrt(26 / 2))
    assert aggregate({0: _record(90.0)})["test_accuracy_std"] == 0.0


def test_summary_csv_rows_golden(tmp_path):
    ticket = {**aggregate({0: _record(90.0, 0.2), 1: _record(92.0, 0.2)}), "round": 1}
    ticket["controls"] = {"reinit": aggregate({0: _record(80.0, 0.2), 1: _record(81.0, 0.2)})}
    summary = {"kind": "imp", "seeds": [0, 1], "controls": ["reinit"], "rounds": [ticket]}
    want = ("method,round,target_density,control,seeds,density_mean,density_std,test_accuracy_mean,"
            "test_accuracy_std,val_accuracy_mean,val_accuracy_std,early_stop_iteration_mean,early_stop_iteration_std,"
            "early_stop_test_accuracy_mean,early_stop_test_accuracy_std\n"
            "imp,1,,none,2,0.2,0.0,91.0,1.4142135623730951,,,10.0,0.0,,\n"
            "imp,1,,reinit,2,0.2,0.0,80.5,0.7071067811865476,,,10.0,0.0,,\n")
    assert format_summary_csv(summary) == want
    write_summary_files(tmp_path, summary)
    first = (tmp_path / "summary.csv").read_bytes()
    write_summary_files(tmp_path, summary)
    assert (tmp_path / "summary.csv").read_bytes() == first == want.encode()
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv", "summary.json"]  # no temporaries


def test_old_summaries_read_with_the_sample_std(tmp_path):
    entry = {**aggregate({0: _record(90.0), 1: _record(92.0)}), "round": 0, "winning_ticket": True, "controls": {}}
    entry["test_accuracy_std"] = 1.0  # what the population formula stored
    (tmp_path / "summary.json").write_text(json.dumps({"kind": "imp", "seeds": [0, 1], "rounds": [entry]}))
    assert load_summary(tmp_path)["rounds"][0]["test_accuracy_std"] == pytest.approx(math.sqrt(2))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    imp = run_imp(IMPConfig(data="digits", rounds=2, seeds=(0, 1), train=TINY), root / "imp")
    pai = run_sparse(PruneInitConfig(data="digits", method="snip", densities=(0.2, 0.05), seeds=(0, 1), train=TINY),
                     root / "snip")
    return root, imp, pai


def _cli(capsys, *argv):
    """Run ``ticketlab ARGV``; return its exit code and everything it printed."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_overlay_of_an_imp_and_a_prune_init_run(two_runs, tmp_path, capsys):
    root, imp, pai = two_runs
    runs = [load_run(root / "imp"), load_run(root / "snip")]
    assert [(r.label, r.kind, r.seeds) for r in runs] == [("imp", "imp", 2), ("snip", "prune-init", 2)]
    assert runs[0].dense == imp["rounds"][0]["test_accuracy"] and runs[1].dense is None
    seeds = [s["test_accuracy"] for s in imp["rounds"][1]["seeds"].values()]
    assert runs[0].curves[0].std[1] == pytest.approx(abs(seeds[0] - seeds[1]) / math.sqrt(2))
    assert runs[1].curves[0].percents == (20.0, 5.0)
    table = format_overlay_table(runs).splitlines()
    assert table[0] == "2 run(s): test accuracy (%) at the end of training, mean ± sample std (2 seeds)"
    # the ticket at rounds 0-2 (round 0 is the dense network: no separate dense row), its reinit
    # control at rounds 1-2, snip at two densities
    assert [line.split()[:2] for line in table[3:]] == [["imp", "imp"]] * 5 + [["snip", "prune-init"]] * 2
    assert not any(line.split()[4] == "dense" for line in table[3:])
    fig = overlay_figure(runs)
    assert tick_labels(fig.axes[0]) == ["100", "50", "20", "10", "5"]
    assert [line.get_label() for line in fig.axes[0].lines] == [f"imp: dense ({runs[0].dense:.2f})", "imp: imp", "imp: imp reinit",
                                                                "snip: snip"]
    assert fig.axes[0].get_title() == "imp, imp reinit, snip: lenet300 on digits (mean ± sample std (2 seeds))"
    code, output = _cli(capsys, "report", str(root / "imp"), str(root / "snip"), "--png", str(tmp_path / "o.png"))
    assert code == 0, output
    assert (tmp_path / "o.png").stat().st_size > 0 and "snip  prune-init" in output


def test_report_on_a_compare_directory_and_on_what_is_not_a_run(tmp_path, capsys):
    out = tmp_path / "cmp"
    run_compare(CompareConfig(methods=("imp", "random"), densities=(0.2,), data="digits", train=TINY), out)
    run = load_run(out)
    assert run.kind == "compare" and [c.name for c in run.curves] == ["imp", "random"]
    assert run.dense == json.loads((out / "compare.json").read_text())["rows"][0]["test_accuracy"]
    code, output = _cli(capsys, "report", str(out))
    assert code == 0, output
    assert (out / "report.png").exists() and "random" in output
    with pytest.raises(TicketlabError, match="is not a ticketlab run directory"):
        load_run(tmp_path)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text('{"kind": "compare"}')
    with pytest.raises(TicketlabError, match="comparison that has not finished yet"):
        load_run(tmp_path / "half")
    code, output = _cli(capsys, "report", str(out), str(tmp_path / "nothing"))
    assert code == 2 and "does not exist" in output


def test_runs_with_the_same_name_keep_their_paths_as_labels(tmp_path):
    assert unique_labels([tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "c"]) == [
        str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run"), "c"]
