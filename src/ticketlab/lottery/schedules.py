"""Per-round pruning rates: one rate, a list of rates (the last repeating), or the one constant
rate that reaches a target density in a given number of rounds.

A round prunes a *base* rate of the weights still remaining in every layer without an override
(with ``scope="global"``: of the pool of those layers, ranked together) and each overridden layer
at its own rate. Overrides are the ``--layer-rate`` patterns, absolute and the same in every
round; without any, layer scope prunes the output layer at half the round's base rate, as in
the LTH paper's LeNet (20% hidden, 10% output). For a single constant rate that default is
stored resolved in the config (``output = rate / 2``), as it always was.

How many weights a round keeps depends only on the counts that remain, never on which weights,
so the density after every round is known before any training (`planned_densities`), and a
target density is reached by bisecting on the constant base rate (`solve_rate`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ..errors import TicketlabError
from ..targets import resolve_patterns
from .config import IMPConfig

#: Bisection steps for `solve_rate` (2**-60 of the unit interval: far below one weight's worth).
_BISECTION_STEPS = 60


@dataclass(frozen=True)
class RoundRates:
    """The rates of one round: ``base`` for the layers without an override, ``overrides`` by name."""

    base: float
    overrides: dict[str, float]

    def per_layer(self, names: Sequence[str]) -> dict[str, float]:
        """Name -> rate for every parameter in ``names`` (layer scope prunes each at this rate)."""
        return {n: self.overrides.get(n, self.base) for n in names}


def explicit_overrides(config: IMPConfig, model: nn.Module, names: list[str]) -> dict[str, float]:
    """Name -> rate from ``config.layer_rates`` (later patterns win); empty when it is None."""
    given = config.layer_rates or ()
    hits = resolve_patterns([p for p, _ in given], names, model, what="--layer-rate pattern")
    rates: dict[str, float] = {}
    for pattern, rate in given:
        for name in hits[pattern]:
            rates[name] = rate
    return rates


def _overrides(config: IMPConfig, model: nn.Module, names: list[str], base: float) -> dict[str, float]:
    """The round's overrides: explicit ones, or the output layer at ``base / 2`` (layer scope default)."""
    if config.layer_rates is None and config.scope == "layer":
        return {name: base / 2 for name in resolve_patterns(["output"], names, model, what="--layer-rate pattern")["output"]}
    return explicit_overrides(config, model, names)


def _groups(config: IMPConfig, names: list[str], overridden: set[str]) -> dict[str, list[str]]:
    """The sets of weights whose kept count a round fixes: every overridden layer alone; the other
    layers alone too with layer scope, or all together (one ranked pool) with global scope."""
    pooled = [n for n in names if n not in overridden]
    groups = {n: [n] for n in names if n in overridden}
    if config.scope == "layer":
        groups.update({n: [n] for n in pooled})
    elif pooled:
        groups["<pool>"] = pooled
    return groups


def planned_densities(config: IMPConfig, model: nn.Module, names: list[str], bases: Sequence[float]) -> list[float]:
    """Overall density (kept / prunable) after rounds 0..len(bases), with base rate ``bases[r-1]`` in
    round r: each group keeps ``remaining - round_half_up(rate * remaining)``, as `prune_round` does."""
    params = dict(model.named_parameters())
    sizes = {n: params[n].numel() for n in names}
    total = sum(sizes.values())
    overridden = set(_overrides(config, model, names, 0.5))
    groups = _groups(config, names, overridden)
    counts = {g: sum(sizes[n] for n in members) for g, members in groups.items()}
    densities = [1.0]
    for base in bases:
        rates = _overrides(config, model, names, base)
        counts = {g: c - math.floor(rates.get(g, base) * c + 0.5) for g, c in counts.items()}
        densities.append(sum(counts.values()) / total)
    return densities


#: Solved rates by (config, architecture, names): every round, seed and early-bird draw asks again.
_SOLVED: dict[tuple, float] = {}


def solve_rate(config: IMPConfig, model: nn.Module, names: list[str]) -> float:
    """The smallest constant base rate whose ``config.rounds`` rounds reach ``config.target_density`` or below.

    Bisection on the exact kept counts (`planned_densities` is non-increasing in the rate), so the
    final density is the largest reachable one not above the target. Solved once per config and
    architecture (it depends on nothing else), then remembered.
    """
    key = (config, tuple(names), tuple((n, tuple(p.shape)) for n, p in model.named_parameters()))
    if key not in _SOLVED:
        _SOLVED[key] = _bisect_rate(config, model, names)
    return _SOLVED[key]


def _bisect_rate(config: IMPConfig, model: nn.Module, names: list[str]) -> float:
    target, rounds = config.target_density, config.rounds
    assert target is not None

    def final(rate: float) -> float:
        return planned_densities(config, model, names, [rate] * rounds)[-1]

    low, high = 0.0, math.nextafter(1.0, 0.0)
    if final(high) > target:
        raise TicketlabError(
            f"--density {target:g} cannot be reached in {rounds} round(s): the layers with their own "
            f"--layer-rate keep {100 * final(high):.2f}% of the weights even when every other weight is pruned."
        )
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        if final(middle) <= target:
            high = middle
        else:
            low = middle
    return high


def base_rates(config: IMPConfig, model: nn.Module, names: list[str]) -> tuple[float, ...]:
    """The base rate of every pruning round 1..rounds (index r-1 for round r)."""
    if config.target_density is not None:
        return (solve_rate(config, model, names),) * config.rounds
    given = config.rate if isinstance(config.rate, tuple) else (config.rate,)
    return tuple(given[min(r, len(given) - 1)] for r in range(config.rounds))


def round_rates(config: IMPConfig, model: nn.Module, names: list[str], rnd: int) -> RoundRates:
    """The rates pruning round ``rnd`` (1-based) uses."""
    if not 1 <= rnd <= config.rounds:
        raise TicketlabError(f"Round {rnd} is not a pruning round of this {config.rounds}-round experiment.")
    base = base_rates(config, model, names)[rnd - 1]
    return RoundRates(base, _overrides(config, model, names, base))
