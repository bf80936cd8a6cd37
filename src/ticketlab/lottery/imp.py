"""Iterative magnitude pruning with rewinding, replicated over seeds, with controls, resumable.

Layout of a run directory (every file written atomically)::

    config.json  metrics.jsonl  summary.json
    seed-<s>/init.safetensors            theta_0 (the whole state dict)
    seed-<s>/rewind.safetensors          theta_k, when rewinding late
    seed-<s>/round-<r>/mask.safetensors  the mask trained in round r (round 0: dense)
    seed-<s>/round-<r>/weights.safetensors, result.json, checkpoint.safetensors (while training)
    seed-<s>/round-<r>/controls/<name>/  the same files for each control
    seed-<s>/round-00/early_bird.safetensors  with --early-bird: the masks drawn during round 0

A unit of work whose ``result.json`` exists is never recomputed; one with a ``checkpoint.safetensors``
resumes from it. Round r+1's mask is a pure function of round r's mask and trained weights (round
1's, with early-bird tickets, the mask stored when the rule fired), and all randomness comes from
seeds derived from the replicate seed, so a resumed run ends exactly like an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DataSplits
from ..errors import TicketlabError
from ..masks import Mask
from ..methods import magnitude_scores
from ..units.aggregate import write_summary_files
from ..units import Experiment, ProgressFactory, UnitJob, WorkerSetting, load_state, save_state
from ..units.base import layout_for
from ..seeding import derive_seed
from ..groups import GroupLayout
from ..select import GroupTarget, keep_counts_after_pruning, select, select_groups
from ..targets import prunable_parameters
from ..train import iterations_per_epoch
from .config import IMPConfig
from .controls import random_mask_like, shuffled_mask
from .early_bird import STORE_NAME, EarlyBirdSearch, EarlyBirdState, check_epsilon
from .schedules import (RoundRates, base_rates, explicit_overrides, family_param, family_rates, planned_densities,
                        round_rates)
from .summary import summarize


def layer_rates(config: IMPConfig, model: nn.Module, names: list[str]) -> dict[str, float]:
    """Pruning rate per prunable parameter named by the ``layer_rates`` patterns (later ones win)."""
    return explicit_overrides(config, model, names)


def prune_round(config: IMPConfig, model: nn.Module, current: Mask, trained: dict[str, torch.Tensor],
                rnd: int = 1, layout: GroupLayout | None = None) -> Mask:
    """Pruning round ``rnd``'s mask: remove the smallest-magnitude fraction of each group's remaining weights.

    Layer scope prunes every layer at its own rate. Global scope ranks all layers without an
    override together at the round's base rate and prunes overridden layers at their own rates
    (`ticketlab.lottery.schedules` says which rates a round uses). With a ``layout`` (blocks,
    channels: `--granularity`) the same holds for whole groups (`_prune_groups`).
    """
    names = list(current)
    scores = magnitude_scores(model, {n: trained[n] for n in names})
    rates = round_rates(config, model, names, rnd)
    if layout is not None:
        return _prune_groups(config, model, current, scores, rates, layout)
    if config.scope == "layer":
        return select(scores, keep_counts_after_pruning(current, rates.per_layer(names)), scope="layer", within=current)
    pooled = [n for n in names if n not in rates.overrides]
    parts: dict[str, torch.Tensor] = {}
    if pooled:
        pool_mask = Mask({n: current[n] for n in pooled})
        remaining = pool_mask.num_kept()
        keep = remaining - int(rates.base * remaining + 0.5)
        parts.update(select({n: scores[n] for n in pooled}, keep, scope="global", within=pool_mask))
    if rates.overrides:
        own = Mask({n: current[n] for n in rates.overrides})
        parts.update(select({n: scores[n] for n in rates.overrides}, keep_counts_after_pruning(own, rates.overrides),
                            scope="layer", within=own))
    return Mask({n: parts[n] for n in names})


def _prune_groups(config: IMPConfig, model: nn.Module, current: Mask, scores: dict[str, torch.Tensor],
                  rates: RoundRates, layout: GroupLayout) -> Mask:
    """A round at a coarse granularity: each family (layer scope), or the pool of families without an
    override (global scope, ranked per weight), loses ``round_half_up(rate · remaining)`` of its
    remaining groups by their L2 norm; overridden families lose their own rate."""
    rate = family_rates(config, model, list(current), layout, rates)
    alive = {f.name: int(f.alive(dict(current.items())).sum()) for f in layout}
    after = {n: alive[n] - math.floor(rate[n] * alive[n] + 0.5) for n in alive}
    pooled = [f.name for f in layout if config.scope == "global" and family_param(f) not in rates.overrides]
    mask = current
    if pooled:
        remaining = sum(alive[n] for n in pooled)
        target = GroupTarget(total=remaining - math.floor(rates.base * remaining + 0.5))
        mask = select_groups(scores, layout.subset(pooled), target, within=mask, aggregate="l2")
    alone = [f.name for f in layout if f.name not in pooled]
    if alone:
        mask = select_groups(scores, layout.subset(alone), GroupTarget(per_family={n: after[n] for n in alone}),
                             within=mask, aggregate="l2")
    return mask


@dataclass
class IMPExperiment(Experiment):
    """One IMP experiment bound to a run directory; `run` does (or resumes) all the work."""

    config: IMPConfig

    growing_lists = ("seeds",)
    growing_counts = ("rounds",)

    @classmethod
    def extends(cls, old: dict[str, Any], new: dict[str, Any]) -> bool:
        """More rounds or seeds; not more rounds with a target density (the rounds set the rate)."""
        if "target_density" in new and old.get("rounds") != new.get("rounds"):
            return False
        return super().extends(old, new)

    @classmethod
    def kind_of(cls, config: IMPConfig) -> str:
        return "imp"

    @classmethod
    def check(cls, config: IMPConfig, data: DataSplits, model: nn.Module) -> None:
        """Patterns must match, a target density must be reachable, an early-bird threshold must be
        able to fail at round 1's density, and the rewind point must lie inside the training budget
        (``model``: the seed-0 `probe`)."""
        names = list(prunable_parameters(model, ignore=config.ignore))
        layer_rates(config, model, names)
        layout = layout_for(config, data, model)
        rates = base_rates(config, model, names, layout)
        if layout is not None:
            planned_densities(config, model, names, rates, layout)   # refuses a round that empties a layer
        if config.early_bird is not None:
            first = planned_densities(config, model, names, rates[:1], layout)
            if first is not None:
                check_epsilon(config.early_bird, first[1])
        ipe = iterations_per_epoch(data, config.train.batch_size)
        config.train.check_budget(ipe)
        total, k = config.train.steps.iterations(ipe), config.rewind.iterations(ipe)
        if k >= total:
            raise TicketlabError(
                f"The rewind step {config.rewind} ({k} iterations) is not before the end of the "
                f"training budget {config.train.steps} ({total} iterations)."
            )

    @property
    def rewind_iteration(self) -> int:
        return self.config.rewind.iterations(iterations_per_epoch(self.data, self.config.train.batch_size))

    @property
    def dense_iterations(self) -> int:
        """Iterations of one full dense training (round 0's budget): the unit of cost."""
        return self.config.train.steps.iterations(iterations_per_epoch(self.data, self.config.train.batch_size))

    def round_base_rates(self) -> tuple[float, ...]:
        """The base pruning rate of rounds 1..rounds (resolved from a target density if one is set)."""
        model = self.new_model(0)
        return base_rates(self.config, model, list(prunable_parameters(model, ignore=self.config.ignore)),
                          self.group_layout(model))

    def execute_seeds(self, seeds: tuple[int, ...]) -> None:
        """Run or resume every round and control of ``seeds``, round by round: round r of every
        seed — tickets and controls — is one batch of independent units (`Experiment.train_all`
        stacks them where that pays), then each seed draws its round r+1 mask."""
        chains = [self._seed_chain(seed) for seed in seeds]
        for rnd in range(self.config.rounds + 1):
            self.train_all([job for chain in chains for job in self._round_jobs(chain, rnd)])
            if rnd == 0:
                for chain in chains:
                    if not chain.rewind_path.exists():
                        raise TicketlabError(f"{str(chain.rewind_path)!r} is missing; delete "
                                             f"{str(chain.seed_dir / 'round-00')!r} to retrain round 0.")
            else:
                self.write_summary()

    def write_summary(self) -> dict[str, Any]:
        summary = summarize(self.out, self.config, dense_iterations=self.dense_iterations, rates=self.round_base_rates())
        write_summary_files(self.out, summary)
        return summary

    # --- the work ----------------------------------------------------------------------------
    def _seed_chain(self, seed: int) -> "_SeedChain":
        """Seed ``seed``'s θ0 (written on first use) and where its rounds stand: the dense mask."""
        seed_dir = self.out / f"seed-{seed}"
        model = self.new_model(seed)
        init_path = seed_dir / "init.safetensors"
        if not init_path.exists():
            save_state(model, init_path)
        names = list(prunable_parameters(model, ignore=self.config.ignore))
        params = dict(model.named_parameters())
        rewind_path = seed_dir / "rewind.safetensors" if self.rewind_iteration else init_path
        return _SeedChain(seed, seed_dir, model, init_path, rewind_path, Mask.ones_like({n: params[n] for n in names}))

    def _round_jobs(self, chain: "_SeedChain", rnd: int) -> list[UnitJob]:
        """Round ``rnd`` of one seed: its mask (drawn from round rnd-1 and stored first), the
        ticket, and each control."""
        seed, round_dir, k = chain.seed, chain.seed_dir / f"round-{rnd:02d}", self.rewind_iteration
        mask_path = round_dir / "mask.safetensors"
        if rnd > 0:
            chain.mask = Mask.load(mask_path) if mask_path.exists() else self._next_mask(chain.seed_dir, rnd,
                                                                                       chain.model, chain.mask)
        mask = chain.mask
        if not mask_path.exists():
            mask.save(mask_path, {"seed": seed, "round": rnd})
        if rnd == 0:
            rewind_path = chain.rewind_path
            capture = {k: (lambda m: save_state(m, rewind_path))} if k else None
            return [self._job(round_dir, seed, rnd, "ticket", lambda: load_state(chain.init_path), mask, 0, capture,
                              on_evaluation=self._early_bird(round_dir, mask))]
        rewind_state = (lambda: load_state(chain.rewind_path))
        jobs = [self._job(round_dir, seed, rnd, "ticket", rewind_state, mask, k)]
        for control in self.config.controls:
            start, control_mask = rewind_state, mask
            if control == "reinit":
                reinit_seed = derive_seed(seed, "reinit", rnd)
                start = (lambda: self.new_model(reinit_seed).state_dict())
            elif control == "random":
                control_mask = random_mask_like(mask, seed, "random", rnd, layout=self.group_layout())
            else:
                control_mask = shuffled_mask(mask, seed, "shuffle", rnd, layout=self.group_layout())
            unit_dir = round_dir / "controls" / control
            if not (unit_dir / "mask.safetensors").exists() and not (unit_dir / "result.json").exists():
                control_mask.save(unit_dir / "mask.safetensors", {"seed": seed, "round": rnd, "control": control})
            jobs.append(self._job(unit_dir, seed, rnd, control, start, control_mask, k))
        return jobs

    def _job(self, unit_dir: Path, seed: int, rnd: int, run: str, start_state: Any, mask: Mask,
             start_iteration: int, capture: dict | None = None,
             on_evaluation: EarlyBirdSearch | None = None) -> UnitJob:
        return UnitJob(unit_dir=unit_dir, model=lambda: self.new_model(seed), start_state=start_state, mask=mask,
                       data_seed=seed, metrics_key={"seed": seed, "round": rnd, "run": run},
                       label=f"seed {seed} round {rnd} {run}", start_iteration=start_iteration, capture=capture,
                       on_evaluation=on_evaluation)

    def _next_mask(self, seed_dir: Path, rnd: int, model: nn.Module, mask: Mask) -> Mask:
        """Round ``rnd``'s mask: the early-bird mask for round 1 if the rule fired, else IMP's."""
        if rnd == 1 and self.config.early_bird is not None:
            early = EarlyBirdState.load(seed_dir / "round-00" / STORE_NAME).mask
            if early is not None:
                return early
        trained = load_state(seed_dir / f"round-{rnd - 1:02d}" / "weights.safetensors")
        return prune_round(self.config, model, mask, trained, rnd, self.group_layout())

    def _early_bird(self, round_dir: Path, dense: Mask) -> EarlyBirdSearch | None:
        """The early-bird search of round 0 (None without --early-bird): draws round 1's mask from
        the weights at every evaluation; fires only after the rewind point."""
        cfg = self.config
        if cfg.early_bird is None:
            return None

        def draw(model: nn.Module) -> Mask:
            return prune_round(cfg, model, dense, dict(model.named_parameters()), 1, self.group_layout())

        return EarlyBirdSearch(round_dir / STORE_NAME, draw, cfg.early_bird, cfg.early_bird_window,
                               after=self.rewind_iteration, stop=cfg.stops_early)



@dataclass
class _SeedChain:
    """Where one seed's chain of rounds stands: its mask so far, and the files it starts from."""

    seed: int
    seed_dir: Path
    model: nn.Module
    init_path: Path
    rewind_path: Path
    mask: Mask


def run_imp(config: IMPConfig, out: str | Path, *, device: torch.device | str = "cpu",
            data: DataSplits | None = None, progress: ProgressFactory | None = None,
            stack: str | int = "auto", workers: WorkerSetting | None = None) -> dict[str, Any]:
    """Run (or resume) an IMP experiment into ``out`` and return its summary (see `summarize`).

    ``stack``: how many networks train together (`ticketlab.units.StackSetting`); ``workers``:
    processes or a Dask cluster for the seeds (`ticketlab.units.WorkerSetting`).
    """
    return IMPExperiment.prepare(config, out, device=device, data=data, progress=progress, stack=stack,
                                 workers=workers).run()
