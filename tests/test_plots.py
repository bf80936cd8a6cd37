"""Figures a paper could use: percent-labelled log axes, titles naming method, model and data, the
dense baseline, distinguishable curves and the sample-std wording (read from the matplotlib figures,
not from pixels)."""

import pytest

from ticketlab.analysis.stability_report import stability_figure
from ticketlab.deploy.bench import bench_figure
from ticketlab.experiments.compare import CompareConfig, compare_figure
from ticketlab.plotting import percent_ticks, spread_label, style, tick_labels
from ticketlab.report import report_figure


def _entry(density, acc, std, **extra):
    return {"density": density, "test_accuracy": acc, "test_accuracy_std": std, "early_stop_iteration": 10.0,
            "early_stop_iteration_std": 1.0, "collapsed_layers": [], **extra}


def _titles(fig):
    return [fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title() for ax in fig.axes]


def test_percent_ticks_are_round_percentages_around_the_data():
    assert percent_ticks([100.0, 21.07, 4.47, 1.19]) == [100, 50, 20, 10, 5, 2, 1]
    assert percent_ticks([20.0, 5.0]) == [20, 10, 5]
    assert percent_ticks([80.0, 0.3]) == [100, 50, 20, 10, 5, 2, 1, 0.5, 0.2]


def test_styles_differ_in_marker_and_line_style_and_spread_is_named():
    first = [(style(i)["marker"], style(i)["linestyle"], style(i)["color"]) for i in range(8)]
    assert len(set(first)) == 8
    assert all(style(i)["linestyle"] != style(i + 1)["linestyle"] and style(i)["marker"] != style(i + 1)["marker"]
               for i in range(12))
    assert spread_label(3) == "mean ± sample std (3 seeds)"
    assert spread_label([3, 6, 3]) == "mean ± sample std (3, 6 seeds)"
    assert spread_label(1) == "1 seed, no spread"


def test_imp_report_axes_show_percentages_title_and_dense_line():
    rounds = [_entry(1.0, 94.5, 0.9, round=0, winning_ticket=True),
              _entry(0.2, 95.0, 0.2, round=1, winning_ticket=True, controls={"reinit": _entry(0.2, 93.0, 0.5)}),
              _entry(0.05, 94.0, 0.3, round=2, winning_ticket=False, controls={"reinit": _entry(0.05, 91.0, 0.4)})]
    summary = {"kind": "imp", "model": "lenet300", "data": "mnist5k", "seeds": [0, 1, 2], "controls": ["reinit"],
               "dense_test_accuracy": 94.5, "rounds": rounds}
    fig = report_figure(summary)
    for ax in fig.axes[:2]:
        assert tick_labels(ax) == ["100", "50", "20", "10", "5"]
        assert ax.get_xscale() == "log" and ax.get_xlim()[0] > ax.get_xlim()[1]  # dense on the left
    assert _titles(fig)[0] == "IMP: lenet300 on mnist5k (mean ± sample std (3 seeds))"
    accuracy = fig.axes[0]
    assert [line.get_ydata()[0] for line in accuracy.lines if line.get_label().startswith("dense")] == [94.5]
    assert [line.get_label() for line in accuracy.lines] == ["ticket", "reinit", "dense (94.50)"]
    assert accuracy.lines[0].get_marker() != accuracy.lines[1].get_marker()
    assert accuracy.get_legend() is None and fig.axes[1].get_legend() is not None  # one legend, outside
    assert len(accuracy.collections) == 2  # a spread band per curve


def test_prune_init_report_names_kind_method_and_draws_a_given_dense_baseline():
    summary = {"kind": "prune-init", "method": "snip", "model": "conv2", "data": "digits", "seeds": [0],
               "controls": [], "dense_test_accuracy": 97.0,
               "rounds": [_entry(0.2, 95.0, 0.0, target_density=0.2), _entry(0.01, 60.0, 0.0, target_density=0.01)]}
    fig = report_figure(summary)
    assert _titles(fig)[0] == "prune-init snip: conv2 on digits (1 seed, no spread)"
    assert tick_labels(fig.axes[0]) == ["20", "10", "5", "2", "1"]
    assert any(line.get_label() == "dense (97.00)" for line in fig.axes[0].lines)


def test_compare_figure_has_percent_axis_dense_line_and_method_title():
    rows = [{"method": "dense", "density": 1.0, "test_accuracy": 95.0, "test_accuracy_std": 0.3},
            {"method": "imp", "density": 0.21, "test_accuracy": 95.1, "test_accuracy_std": 0.1},
            {"method": "imp", "density": 0.011, "test_accuracy": 90.0, "test_accuracy_std": 0.4},
            {"method": "snip", "density": 0.2, "test_accuracy": 94.0, "test_accuracy_std": 0.2},
            {"method": "snip", "density": 0.01, "test_accuracy": 80.0, "test_accuracy_std": 1.0}]
    config = CompareConfig(methods=("imp", "snip"), densities=(0.2, 0.01), data="digits", seeds=(0, 1, 2))
    fig = compare_figure(rows, config)
    ax = fig.axes[0]
    assert tick_labels(ax) == ["100", "50", "20", "10", "5", "2", "1"]
    assert ax.get_title() == "imp, snip: lenet300 on digits (mean ± sample std (3 seeds))"
    assert [line.get_label() for line in ax.lines] == ["imp", "snip", "dense (95.00)"]
    assert ax.lines[0].get_linestyle() != ax.lines[1].get_linestyle()


def test_stability_and_bench_figures_name_what_they_show():
    summary = {"model": "resnet20", "data": "digits", "seed": 0, "round": 7, "density": 0.2097, "stable_barrier": 2.0,
               "rewind_points": [{"rewind": "0", "iteration": 0, "alphas": [0, 0.5, 1], "errors": [5, 9, 5],
                                  "barrier": 4.0}, {"rewind": "100it", "iteration": 100, "alphas": [0, 0.5, 1],
                                                    "errors": [5, 5.5, 5], "barrier": 0.5}]}
    fig = stability_figure(summary)
    assert _titles(fig)[0] == "Instability of IMP round 7 (20.97% of weights left): resnet20 on digits, seed 0"
    assert tick_labels(fig.axes[1]) == ["0", "100"]
    assert fig.axes[0].lines[0].get_marker() != fig.axes[0].lines[1].get_marker()
    result = {"model": "runs/lenet", "device": "cpu", "threads": 1,
              "end_to_end": [{"batch": b, "speedup": s} for b, s in ((1, 1.2), (8, 2.0), (64, 3.1))]}
    fig = bench_figure(result)
    assert tick_labels(fig.axes[0]) == ["1", "8", "64"]
    assert fig.axes[0].get_title() == "Deployed sparse lenet on cpu, 1 thread(s)"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
