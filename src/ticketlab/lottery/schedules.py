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
from ..groups import Family, GroupLayout
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


def planned_densities(config: IMPConfig, model: nn.Module, names: list[str], bases: Sequence[float],
                      layout: GroupLayout | None = None) -> list[float] | None:
    """Overall density (kept / prunable) after rounds 0..len(bases), with base rate ``bases[r-1]`` in
    round r: each group keeps ``remaining - round_half_up(rate * remaining)``, as `prune_round` does.
    With a ``layout`` (blocks, channels) the groups are those families (`planned_group_densities`;
    None with global scope, where it depends on the trained weights)."""
    if layout is not None:
        return planned_group_densities(config, model, names, layout, bases)
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


def solve_rate(config: IMPConfig, model: nn.Module, names: list[str], layout: GroupLayout | None = None) -> float:
    """The smallest constant base rate whose ``config.rounds`` rounds reach ``config.target_density`` or below.

    Bisection on the exact kept counts (`planned_densities` is non-increasing in the rate), so the
    final density is the largest reachable one not above the target. Solved once per config and
    architecture (it depends on nothing else), then remembered.
    """
    if layout is not None and config.scope != "layer":
        raise TicketlabError(f"With --granularity {config.granularity} and --scope global the density a round "
                             "reaches depends on which groups the trained weights favour, so --density cannot "
                             "set the rate; give --rate, or use --scope layer.")
    key = (config, tuple(names), tuple((n, tuple(p.shape)) for n, p in model.named_parameters()))
    if key not in _SOLVED:
        _SOLVED[key] = _bisect_rate(config, model, names, layout)
    return _SOLVED[key]


def _bisect_rate(config: IMPConfig, model: nn.Module, names: list[str], layout: GroupLayout | None) -> float:
    target, rounds = config.target_density, config.rounds
    assert target is not None

    def final(rate: float) -> float:
        if layout is not None:
            try:
                densities = planned_group_densities(config, model, names, layout, [rate] * rounds)
            except TicketlabError:   # the rate empties a layer: as pruned as it gets
                return 0.0
            assert densities is not None
            return densities[-1]
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


def base_rates(config: IMPConfig, model: nn.Module, names: list[str],
               layout: GroupLayout | None = None) -> tuple[float, ...]:
    """The base rate of every pruning round 1..rounds (index r-1 for round r)."""
    if config.target_density is not None:
        return (solve_rate(config, model, names, layout),) * config.rounds
    given = config.rate if isinstance(config.rate, tuple) else (config.rate,)
    return tuple(given[min(r, len(given) - 1)] for r in range(config.rounds))


# --- groups (blocks, channels) ----------------------------------------------------------------------
def family_rates(config: IMPConfig, model: nn.Module, names: list[str], layout: GroupLayout,
                 rates: RoundRates) -> dict[str, float]:
    """Family -> pruning rate of one round at a coarse granularity: a family takes the rate of the
    parameter it is made of (a block family) or of its first producer (a channel family), so
    ``--layer-rate PATTERN=RATE`` names layers as it does for single weights. An explicit pattern
    that names no family's layer (at channel granularity the output layer, whose units are the
    classes) is one sentence; the default half rate of the output layer applies to blocks only."""
    per_param = rates.per_layer(names)
    owner = {family_param(f): f.name for f in layout}
    for pattern, _ in config.layer_rates or ():
        hits = resolve_patterns([pattern], names, model, what="--layer-rate pattern")[pattern]
        if not any(h in owner for h in hits):
            raise TicketlabError(f"--layer-rate {pattern!r} names {', '.join(hits)}, whose {_unit(layout)}s cannot be "
                                 f"pruned ({_why_not(layout, hits)}); drop it.")
    return {f.name: per_param.get(family_param(f), rates.base) for f in layout}


def family_param(family: Family) -> str:
    """The parameter whose ``--layer-rate`` a family takes: a channel family's first producer's
    weight, a block family's own."""
    producers = getattr(family, "producers", ())
    return f"{producers[0]}.weight" if producers else family.params()[0]


def _unit(layout: GroupLayout) -> str:
    return next(iter(layout)).unit if len(layout) else "group"


def _why_not(layout: GroupLayout, hits: Sequence[str]) -> str:
    reasons = [layout.frozen[h[: -len(".weight")]] for h in hits if h[: -len(".weight")] in layout.frozen]
    return reasons[0] if reasons else "no coupled family starts there"


def planned_group_counts(config: IMPConfig, model: nn.Module, names: list[str], layout: GroupLayout,
                         bases: Sequence[float]) -> list[dict[str, int]] | None:
    """Groups every family keeps after rounds 0..len(bases) with layer scope (each family loses
    ``round_half_up(rate · remaining)`` per round, as `prune_round` does); None with global scope,
    where the split over families depends on the trained weights. A round that would leave a
    family below its minimum (a layer without channels) is one sentence, before any training."""
    if config.scope != "layer":
        return None
    counts = {f.name: f.size for f in layout}
    plan = [dict(counts)]
    for index, base in enumerate(bases, start=1):
        rates = family_rates(config, model, names, layout, RoundRates(base, _overrides(config, model, names, base)))
        counts = {n: c - math.floor(rates[n] * c + 0.5) for n, c in counts.items()}
        for family in layout:
            if counts[family.name] < family.minimum:
                raise TicketlabError(f"Round {index} would remove every {family.unit} of {family.name!r} (rate "
                                     f"{rates[family.name]:g} of its last ones); use fewer --rounds or a lower --rate.")
        plan.append(dict(counts))
    return plan


def planned_group_densities(config: IMPConfig, model: nn.Module, names: list[str], layout: GroupLayout,
                            bases: Sequence[float]) -> list[float] | None:
    """Overall density (kept weights / prunable weights) after every round, at a coarse granularity
    with layer scope (`planned_group_counts`, exact); None with global scope."""
    plan = planned_group_counts(config, model, names, layout, bases)
    if plan is None:
        return None
    total = layout.total_weights()
    return [layout.kept_weights(counts) / total for counts in plan]


def round_rates(config: IMPConfig, model: nn.Module, names: list[str], rnd: int) -> RoundRates:
    """The rates pruning round ``rnd`` (1-based) uses."""
    if not 1 <= rnd <= config.rounds:
        raise TicketlabError(f"Round {rnd} is not a pruning round of this {config.rounds}-round experiment.")
    base = base_rates(config, model, names)[rnd - 1]
    return RoundRates(base, _overrides(config, model, names, base))
