"""``summary.json``: one entry per round, means and spreads over seeds, controls beside the ticket,
and what finding the tickets cost.

Cost is counted in training iterations and in *dense trainings*: iterations divided by one full
dense training's (round 0's budget). A ticket found at round r cost rounds 0..r of the ticket line
(the dense training, cut at the early-bird point if there is one, and every pruned retraining:
with late rewinding each of those trains from θk, so costs a little less than one dense training).
Controls are analysis, not part of finding the ticket: their iterations are listed apart, and so
are the iterations round 0 spends after an early-bird point only to be the dense reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..units import aggregate_units
from .config import IMPConfig
from .early_bird import STORE_NAME, EarlyBirdState

#: What the cost fields count, stated in every summary.
COUNTED = ("ticket: iterations of rounds 0..r (round 0 up to its early-bird point, if any); controls and "
           "round 0's training after an early-bird point (the dense reference) are analysis, counted apart")


def summarize(out: Path, config: IMPConfig, *, dense_iterations: int | None = None,
              rates: Sequence[float] | None = None) -> dict[str, Any]:
    """Collect every finished ``result.json`` under ``out`` into the summary structure.

    A round appears once all seeds have finished its ticket; controls appear once all seeds have
    finished them. ``winning_ticket`` compares the mean final test accuracy with the dense
    reference (round 0's, or ``config.dense_accuracy``), within ``config.tolerance`` percentage
    points. ``rates`` are the base rates of rounds 1..; ``dense_iterations`` (one full dense
    training) turns iterations into dense-training multiples (omitted without it).
    """
    rounds: list[dict[str, Any]] = []
    reference = config.dense_accuracy
    for rnd in range(config.rounds + 1):
        entry = aggregate_units({s: out / f"seed-{s}" / f"round-{rnd:02d}" for s in config.seeds}, config.controls)
        if entry is None:
            break
        if rnd == 0 and reference is None:
            reference = entry["test_accuracy"]
        rate = {"rate": rates[rnd - 1]} if rates and rnd else {}
        entry = {"round": rnd, **rate, **entry,
                 "winning_ticket": bool(entry["test_accuracy"] >= reference - config.tolerance)}
        rounds.append(entry)
    early = _early_bird(out, config)
    summary = {
        "kind": "imp",
        "model": config.model,
        "data": config.data,
        "seeds": list(config.seeds),
        "controls": list(config.controls),
        "tolerance": config.tolerance,
        "dense_test_accuracy": reference,
        "dense_reference": {"test_accuracy": reference,
                            "source": "round 0" if config.dense_accuracy is None else "--dense-accuracy"},
        "complete": len(rounds) == config.rounds + 1
        and all(len(r["controls"]) == len(config.controls) for r in rounds[1:]),
        "rounds": rounds,
    }
    if early is not None:
        summary["early_bird"] = early
    if dense_iterations and all("iterations" in r for r in rounds):
        summary["cost"] = add_costs(rounds, dense_iterations, _early_bird_stops(early))
        winner = sparsest_winner(rounds)
        summary["sparsest_winning_round"] = None if winner is None else winner["round"]
    return summary


def _early_bird(out: Path, config: IMPConfig) -> dict[str, Any] | None:
    """The early-bird record of every seed whose round 0 drew masks (None without --early-bird)."""
    if config.early_bird is None:
        return None
    seeds = {}
    for seed in config.seeds:
        path = out / f"seed-{seed}" / "round-00" / STORE_NAME
        if path.exists():
            seeds[str(seed)] = EarlyBirdState.load(path).record()
    return {"epsilon": config.early_bird, "window": config.early_bird_window,
            "round_0_stops": config.stops_early, "seeds": seeds}


def _early_bird_stops(early: dict[str, Any] | None) -> dict[str, int | None]:
    """Seed (as a string) -> iteration where the rule fired (None: never)."""
    if early is None:
        return {}
    return {seed: record["stop_iteration"] for seed, record in early["seeds"].items()}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _round_iterations(entry: dict[str, Any], stops: dict[str, int | None]) -> tuple[float, float]:
    """(ticket iterations, reference-only iterations) of a round, means over seeds. Only round 0
    has the second: the iterations it trained past its early-bird point."""
    ticket, reference = [], []
    for seed, record in entry["seeds"].items():
        trained = record["iterations"]
        stop = stops.get(seed) if entry["round"] == 0 else None
        ticket.append(trained if stop is None else min(stop, trained))
        reference.append(trained - ticket[-1])
    return _mean(ticket), _mean(reference)


def add_costs(rounds: list[dict[str, Any]], dense_iterations: int, stops: dict[str, int | None]) -> dict[str, Any]:
    """Add a ``cost`` record to every round entry (in place) and return the run's totals.

    Per round: ``iterations`` (the ticket's, mean over seeds) and ``dense_trainings`` (the same
    / ``dense_iterations``), ``cumulative_iterations`` / ``cumulative_dense_trainings`` (rounds 0..r:
    what the ticket of round r cost), ``control_iterations`` (all controls of the round together),
    and for round 0 ``reference_iterations``.
    """
    cumulative = controls_total = reference_total = 0.0
    for entry in rounds:
        ticket, reference = _round_iterations(entry, stops)
        controls = sum(c["iterations"] for c in entry["controls"].values() if "iterations" in c)
        cumulative += ticket
        controls_total += controls
        reference_total += reference
        entry["cost"] = {
            "iterations": ticket, "dense_trainings": ticket / dense_iterations,
            "cumulative_iterations": cumulative, "cumulative_dense_trainings": cumulative / dense_iterations,
            "control_iterations": controls, **({"reference_iterations": reference} if entry["round"] == 0 else {}),
        }
    total = cumulative + controls_total + reference_total
    return {"counted": COUNTED, "dense_iterations": dense_iterations,
            "ticket_iterations": cumulative, "ticket_dense_trainings": cumulative / dense_iterations,
            "control_iterations": controls_total, "reference_iterations": reference_total,
            "total_iterations": total, "total_dense_trainings": total / dense_iterations}


def sparsest_winner(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pruned round of lowest density that is a winning ticket (None if no pruned round wins)."""
    winners = [r for r in rounds if r["round"] > 0 and r["winning_ticket"]]
    return min(winners, key=lambda r: r["density"]) if winners else None
