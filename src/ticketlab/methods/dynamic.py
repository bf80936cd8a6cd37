"""Dynamic sparse training: the drop/grow machinery shared by RigL and SET, and its configuration.

A `MaskUpdater` moves the kept weights of a `Mask` during training while every layer keeps
exactly as many weights as it started with. The trainer (`ticketlab.train.train`) drives it:

1. ``start(total_iterations, iterations_per_epoch)`` resolves the schedule (ΔT, T_end) and resets
   the updater's random state, so a fresh `train` call is reproducible whatever ran before;
2. on an update iteration, right after ``backward()`` and *before* the pruned gradients are zeroed,
   ``capture(bound)`` takes what growth needs from the dense gradient (RigL: ``|∇L|``; SET: nothing);
3. after the optimiser step, ``update_(bound, optimizer, t, captured)`` rewires the mask in place.

The update at iteration ``t`` (the number of optimiser steps done), for every ``t`` that is a
multiple of ΔT with ``0 < t < T_end`` (Evci et al. 2020, Algorithm 1 and the reference code):

* ``f(t) = α/2 · (1 + cos(π t / T_end))`` and, per layer, ``k = round_half_up(f(t) · n_kept)``;
* **drop** the ``k`` kept weights of smallest ``|θ|`` (ties: the higher flat index is dropped);
* **grow** ``k`` weights among those inactive *after the drop* by the method's score (RigL: largest
  dense ``|∇L|`` of the current batch; SET: uniform random from a seeded generator; ties: the
  lower flat index wins). As in the reference code (google-research/rigl: growth candidates are
  ``mask1 == 0``, new connections are ``grown & ~old_mask``) and Algorithm 1 of the paper
  (``I_grow = ArgTopK_{i ∉ θ \\ I_drop}``), a weight dropped in this update may be grown again.
  Such a weight was never really removed: it keeps its value and optimiser state. Only *net*
  changes count: ``dropped = old & ~new`` and ``grown = new & ~old`` (equal sizes per layer).
  This choice also keeps dense layers (ERK can make small layers dense) well defined: all their
  dropped weights are regrown and nothing changes;
* grown weights start at exactly zero and the optimiser state (SGD momentum, Adam ``exp_avg`` /
  ``exp_avg_sq``, ...) of dropped and grown weights is reset to zero, so no stale statistics leak
  into a new connection.

Both rankings go through `ticketlab.select.select` (within a layer, exact-k, stable tie-breaking);
there is no second top-k routine here.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import TicketlabError
from ..masks import BoundMask, Mask
from ..select import select
from ..steps import Step

DST_METHODS: tuple[str, ...] = ("rigl", "set")
#: The fewest mask updates a RigL / SET run may make: with fewer it is static sparse training by
#: another name (and 0 updates would report a "rigl" result that never moved its mask).
MIN_MASK_UPDATES = 4


@dataclass(frozen=True)
class DSTConfig:
    """How the mask moves during dynamic sparse training.

    ``update_every`` is ΔT as a step string (``"100it"``, ``"1ep"``); ``alpha`` the initial drop
    fraction, decayed by a cosine to 0 at ``T_end = end_fraction × budget``; no update happens at
    or after T_end, so the final quarter of training (by default) fine-tunes a fixed mask.
    """

    method: str = "rigl"
    update_every: str = "100it"
    alpha: float = 0.3
    end_fraction: float = 0.75

    def __post_init__(self) -> None:
        if self.method not in DST_METHODS:
            raise TicketlabError(f"Unknown dynamic sparse training method {self.method!r}; choose one of {', '.join(DST_METHODS)}.")
        step = Step.parse(self.update_every)
        if step.count < 1:
            raise TicketlabError(f"The mask update interval --update-every must be positive (got {self.update_every!r}).")
        object.__setattr__(self, "update_every", str(step))
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha <= 1:
            raise TicketlabError(f"The drop fraction alpha must lie in (0, 1] (got {self.alpha}).")
        if isinstance(self.end_fraction, bool) or not isinstance(self.end_fraction, (int, float)) \
                or not 0 < self.end_fraction <= 1:
            raise TicketlabError(f"The end of mask updates --end-fraction must lie in (0, 1] of training (got {self.end_fraction}).")

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "update_every": self.update_every, "alpha": self.alpha,
                "end_fraction": self.end_fraction}


@dataclass(frozen=True)
class UpdateSchedule:
    """ΔT, T_end (in iterations) and α, resolved against one training budget."""

    every: int
    end: int
    alpha: float

    @classmethod
    def resolve(cls, config: DSTConfig, total_iterations: int, iterations_per_epoch: int) -> "UpdateSchedule":
        every = Step.parse(config.update_every).iterations(iterations_per_epoch)
        end = math.floor(config.end_fraction * total_iterations + 0.5)
        return cls(every=every, end=end, alpha=float(config.alpha))

    def is_update(self, iteration: int) -> bool:
        """True when the mask is updated after ``iteration`` optimiser steps (``0 < t < T_end``)."""
        return 0 < iteration < self.end and iteration % self.every == 0

    def drop_fraction(self, iteration: int) -> float:
        """``f(t) = α/2 · (1 + cos(π t / T_end))``: α at t = 0, 0 at T_end."""
        return self.alpha / 2 * (1 + math.cos(math.pi * iteration / self.end))

    def update_iterations(self) -> list[int]:
        """Every iteration at which the mask will be updated."""
        return list(range(self.every, self.end, self.every))


def check_update_count(config: DSTConfig, total_iterations: int, iterations_per_epoch: int) -> int:
    """The number of mask updates this budget allows; a TicketlabError if below `MIN_MASK_UPDATES`."""
    schedule = UpdateSchedule.resolve(config, total_iterations, iterations_per_epoch)
    count = len(schedule.update_iterations())
    if count < MIN_MASK_UPDATES:
        needed = math.floor(MIN_MASK_UPDATES * schedule.every / config.end_fraction) + 1
        raise TicketlabError(
            f"{config.method} would update the mask {count} time(s) in {total_iterations} iterations (every "
            f"{schedule.every} until {schedule.end}), fewer than the minimum of {MIN_MASK_UPDATES}; lower "
            f"--update-every, raise --end-fraction, or train longer (--steps of at least {needed}it)."
        )
    return count


def drop_count(fraction: float, kept: int) -> int:
    """Weights dropped (and grown) in a layer keeping ``kept``: ``round_half_up(fraction · kept)``."""
    return min(kept, math.floor(fraction * kept + 0.5))


def top_k_among(scores: torch.Tensor, candidates: torch.Tensor, k: int, name: str) -> torch.Tensor:
    """Bool tensor (shape of ``candidates``) marking the ``k`` highest ``scores`` among ``candidates``.

    The ranking and its tie-breaking (lower flat index wins) are `ticketlab.select.select`'s,
    applied to the candidates' scores gathered in flat-index order. ``select`` sorts everything it
    is given, and a full sort of a large layer at every update would cost more than the training
    steps in between, so only a pool is handed to it: the candidates scoring at least the k-th
    largest score (`torch.topk` / `torch.kthvalue`). Every winner is in the pool (at most k - 1
    scores beat the threshold) and the pool keeps the flat-index order, so the result is exactly
    what ``select`` would return on all candidates.

    Args:
        scores: any shape, same number of elements as ``candidates``; any device.
        candidates: CPU bool tensor; ``k`` must not exceed its number of True entries.
    """
    index = candidates.flatten().nonzero().flatten()  # (n,) ascending flat indices, CPU
    values = scores.detach().flatten()[index.to(scores.device)].to(device="cpu", dtype=torch.float64)
    if torch.isnan(values).any():
        raise TicketlabError(f"The scores for {name!r} contain NaN (did training diverge?), so no mask update is possible.")
    n = len(index)
    if 0 < k < n:
        # the k-th largest score: topk is the faster for small k, kthvalue for large k
        threshold = (torch.topk(values, k, sorted=False).values.min() if k <= n // 2
                     else torch.kthvalue(values, n - k + 1).values)
        pool = values >= threshold
        index, values = index[pool], values[pool]
    chosen = select({name: values}, {name: k}, scope="layer")[name]
    out = torch.zeros(candidates.numel(), dtype=torch.bool)
    out[index[chosen]] = True
    return out.view(candidates.shape)


@dataclass(frozen=True)
class UpdateStats:
    """What one update did: the drop fraction used, weights dropped (= grown) by the rule, and the
    net number of kept weights that moved (drops that were regrown at once do not count)."""

    drop_fraction: float
    dropped: int
    moved: int


class MaskUpdater(ABC):
    """Base class of RigL and SET: schedule, drop by magnitude, grow by a method-specific score.

    Subclasses implement `grow_scores` (and `capture` when growth needs the dense gradient).
    The updater holds no reference to a model or optimiser between calls; its only state is
    what `state_dict` returns (for resumable checkpoints).
    """

    name: ClassVar[str] = ""

    def __init__(self, config: DSTConfig, *, seed: int):
        if config.method != self.name:
            raise TicketlabError(f"A {type(self).__name__} updater was given a config for method {config.method!r}.")
        self.config = config
        self.seed = int(seed)
        self.schedule: UpdateSchedule | None = None

    # --- driven by the trainer -----------------------------------------------------------------
    def start(self, total_iterations: int, iterations_per_epoch: int) -> UpdateSchedule:
        """Resolve the schedule for this budget and reset any random state to the seed."""
        self.schedule = UpdateSchedule.resolve(self.config, total_iterations, iterations_per_epoch)
        self.reset()
        return self.schedule

    def reset(self) -> None:
        """Return random state to the seed (nothing to do for deterministic methods)."""

    def capture(self, bound: BoundMask) -> Any:
        """Called after backward, before pruned gradients are zeroed, on update iterations only.

        Returns whatever `grow_scores` needs from this batch (default: nothing). Under DDP the
        gradients seen here are already averaged over ranks by DDP's backward all-reduce.
        """
        return None

    @abstractmethod
    def grow_scores(self, bound: BoundMask, captured: Any) -> dict[str, torch.Tensor]:
        """Name -> score tensor (same shape as the weight); the highest inactive scores are grown."""

    def update_(self, bound: BoundMask, optimizer: torch.optim.Optimizer | None, iteration: int,
                captured: Any = None) -> UpdateStats:
        """The scheduled update after ``iteration`` optimiser steps (see the module docstring)."""
        if self.schedule is None:
            raise TicketlabError("The mask updater was not started: call start() with the training budget first.")
        return self.rewire_(bound, optimizer, self.schedule.drop_fraction(iteration), captured)

    @torch.no_grad()
    def rewire_(self, bound: BoundMask, optimizer: torch.optim.Optimizer | None, fraction: float,
                captured: Any = None) -> UpdateStats:
        """Drop ``round(fraction · n_kept)`` weights per layer by magnitude and grow as many.

        Mutates ``bound.mask``'s bool tensors in place (CPU), refreshes ``bound``'s device factors,
        zeroes the dropped weights and sets grown ones to zero, and zeroes the optimiser state of
        both. Shapes: every per-layer tensor here has the shape of its weight (``(out, in)`` or
        ``(out, in, kh, kw)``) or is its flattening ``(N,)``.
        """
        mask: Mask = bound.mask
        names = list(mask)
        kept = {n: int(torch.count_nonzero(mask[n])) for n in names}
        counts = {n: drop_count(fraction, kept[n]) for n in names}
        if not any(counts.values()):
            return UpdateStats(fraction, 0, 0)
        grow_scores = self.grow_scores(bound, captured)
        moved = 0
        for name, param in zip(names, bound.params):
            k = counts[name]
            if k == 0:
                continue
            old = mask[name]
            # 1. drop: keep the n_kept - k largest |θ| among the kept weights
            survivors = top_k_among(param.detach().abs(), old, kept[name] - k, name)
            # 2. grow: the k best scores among the weights inactive after the drop
            grown = top_k_among(grow_scores[name], ~survivors, k, name)
            new = survivors | grown
            changed = old ^ new  # net dropped ∪ net grown
            n_changed = int(torch.count_nonzero(changed))
            if n_changed == 0:
                continue
            moved += n_changed // 2
            changed_dev = changed.to(param.device)
            # grown weights start at exactly 0 (they are 0 already while pruned; this makes it a rule)
            param.masked_fill_(changed_dev & new.to(param.device), 0.0)
            if optimizer is not None:
                for value in optimizer.state.get(param, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == param.shape:
                        value.masked_fill_(changed_dev, 0)
            old.copy_(new)  # in place: the caller's Mask is the live mask
        bound.refresh()
        bound.zero_weights_()  # dropped weights -> exactly 0
        return UpdateStats(fraction, sum(counts.values()), moved)

    # --- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically after a resume."""
        return {"method": self.name, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.name:
            raise TicketlabError(
                f"The checkpoint was written by a {state.get('method')!r} mask updater, not {self.name!r}; "
                "resume with the same method or start a new run."
            )


__all__ = ["DSTConfig", "DST_METHODS", "MIN_MASK_UPDATES", "check_update_count", "MaskUpdater", "UpdateSchedule", "UpdateStats", "drop_count",
           "top_k_among"]
