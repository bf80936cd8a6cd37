"""Iterative magnitude pruning with rewinding, replicated over seeds, with controls, resumable.

Layout of a run directory (every file written atomically)::

    config.json  metrics.jsonl  summary.json
    seed-<s>/init.safetensors            theta_0 (the whole state dict)
    seed-<s>/rewind.safetensors          theta_k, when rewinding late
    seed-<s>/round-<r>/mask.safetensors  the mask trained in round r (round 0: dense)
    seed-<s>/round-<r>/weights.safetensors, result.json, checkpoint.safetensors (while training)
    seed-<s>/round-<r>/controls/<name>/  the same files for each control

A unit of work whose ``result.json`` exists is never recomputed; one with a ``checkpoint.safetensors``
resumes from it. Round r+1's mask is a pure function of round r's mask and trained weights, and
all randomness comes from seeds derived from the replicate seed, so a resumed run ends exactly
like an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DataSplits
from ..errors import TicketlabError
from ..masks import Mask
from ..methods import magnitude_scores
from ..models import create_model
from ..units import Experiment, ProgressFactory, load_state, save_state, train_unit
from ..files import write_json
from ..seeding import derive_seed
from ..select import keep_counts_after_pruning, select
from ..targets import prunable_parameters, resolve_patterns
from ..train import iterations_per_epoch
from .config import IMPConfig
from .controls import random_mask_like, shuffled_mask
from .summary import summarize

def layer_rates(config: IMPConfig, model: nn.Module, names: list[str]) -> dict[str, float]:
    """Pruning rate per prunable parameter: ``config.rate`` overridden by ``layer_rates`` patterns."""
    patterns = [p for p, _ in config.layer_rates]
    hits = resolve_patterns(patterns, names, model, what="--layer-rate pattern")
    rates = {}
    for pattern, rate in config.layer_rates:  # later patterns win
        for name in hits[pattern]:
            rates[name] = rate
    return rates


def prune_round(config: IMPConfig, model: nn.Module, current: Mask, trained: dict[str, torch.Tensor]) -> Mask:
    """The next IMP mask: remove the smallest-magnitude fraction of each group's remaining weights.

    Layer scope prunes every layer at its own rate. Global scope ranks all layers without an
    explicit override together at ``config.rate`` and prunes overridden layers at their own rates.
    """
    names = list(current)
    scores = magnitude_scores(model, {n: trained[n] for n in names})
    overrides = layer_rates(config, model, names)
    if config.scope == "layer":
        rates = {n: overrides.get(n, config.rate) for n in names}
        return select(scores, keep_counts_after_pruning(current, rates), scope="layer", within=current)
    pooled = [n for n in names if n not in overrides]
    parts: dict[str, torch.Tensor] = {}
    if pooled:
        pool_mask = Mask({n: current[n] for n in pooled})
        remaining = pool_mask.num_kept()
        keep = remaining - int(config.rate * remaining + 0.5)
        parts.update(select({n: scores[n] for n in pooled}, keep, scope="global", within=pool_mask))
    if overrides:
        own = Mask({n: current[n] for n in overrides})
        parts.update(select({n: scores[n] for n in overrides}, keep_counts_after_pruning(own, overrides),
                            scope="layer", within=own))
    return Mask({n: parts[n] for n in names})


@dataclass
class IMPExperiment(Experiment):
    """One IMP experiment bound to a run directory; `run` does (or resumes) all the work."""

    config: IMPConfig

    @classmethod
    def kind_of(cls, config: IMPConfig) -> str:
        return "imp"

    @classmethod
    def check(cls, config: IMPConfig, data: DataSplits) -> None:
        """Patterns must match, and the rewind point must lie inside the training budget."""
        model = create_model(config.model, data.input_shape, data.num_classes, seed=0)
        names = list(prunable_parameters(model, ignore=config.ignore))
        layer_rates(config, model, names)
        ipe = iterations_per_epoch(data, config.train.batch_size)
        total, k = config.train.steps.iterations(ipe), config.rewind.iterations(ipe)
        if k >= total:
            raise TicketlabError(
                f"The rewind step {config.rewind} ({k} iterations) is not before the end of the "
                f"training budget {config.train.steps} ({total} iterations)."
            )

    @property
    def rewind_iteration(self) -> int:
        return self.config.rewind.iterations(iterations_per_epoch(self.data, self.config.train.batch_size))

    def execute(self) -> dict[str, Any]:
        """Run or resume every seed, round and control; return (and write) the summary."""
        for seed in self.config.seeds:
            self._run_seed(seed)
        return self.write_summary()

    def write_summary(self) -> dict[str, Any]:
        summary = summarize(self.out, self.config)
        write_json(self.out / "summary.json", summary)
        return summary

    # --- the work ----------------------------------------------------------------------------
    def _run_seed(self, seed: int) -> None:
        cfg, seed_dir = self.config, self.out / f"seed-{seed}"
        model = self.new_model(seed)
        init_path = seed_dir / "init.safetensors"
        if not init_path.exists():
            save_state(model, init_path)
        theta0 = load_state(init_path)
        names = list(prunable_parameters(model, ignore=cfg.ignore))
        k = self.rewind_iteration
        rewind_path = seed_dir / "rewind.safetensors" if k else init_path

        mask = Mask.ones_like({n: theta0[n] for n in names})
        for rnd in range(cfg.rounds + 1):
            round_dir = seed_dir / f"round-{rnd:02d}"
            mask_path = round_dir / "mask.safetensors"
            if rnd > 0:
                if mask_path.exists():
                    mask = Mask.load(mask_path)
                else:
                    trained = load_state(seed_dir / f"round-{rnd - 1:02d}" / "weights.safetensors")
                    mask = prune_round(cfg, model, mask, trained)
            if not mask_path.exists():
                mask.save(mask_path, {"seed": seed, "round": rnd})
            if rnd == 0:
                capture = {k: (lambda m: save_state(m, rewind_path))} if k else {}
                self._train_unit(round_dir, seed, rnd, "ticket", theta0, mask, 0, capture)
                if not rewind_path.exists():
                    raise TicketlabError(f"{str(rewind_path)!r} is missing; delete {str(round_dir)!r} to retrain round 0.")
                continue
            rewind_state = load_state(rewind_path)
            self._train_unit(round_dir, seed, rnd, "ticket", rewind_state, mask, k)
            for control in cfg.controls:
                start, control_mask = rewind_state, mask
                if control == "reinit":
                    start = self.new_model(derive_seed(seed, "reinit", rnd)).state_dict()
                elif control == "random":
                    control_mask = random_mask_like(mask, seed, "random", rnd)
                else:
                    control_mask = shuffled_mask(mask, seed, "shuffle", rnd)
                self._train_unit(round_dir / "controls" / control, seed, rnd, control, start, control_mask, k)
            self.write_summary()

    def _train_unit(self, unit_dir: Path, seed: int, rnd: int, run: str, start_state: dict[str, torch.Tensor],
                    mask: Mask, start_iteration: int, capture: dict | None = None) -> dict[str, Any]:
        if run != "ticket" and not (unit_dir / "mask.safetensors").exists() and not (unit_dir / "result.json").exists():
            mask.save(unit_dir / "mask.safetensors", {"seed": seed, "round": rnd, "control": run})
        return train_unit(
            unit_dir, model=self.new_model(seed), start_state=start_state, mask=mask, data=self.data,
            config=self.config.train, data_seed=seed, device=self.device, metrics=self.metrics,
            metrics_key={"seed": seed, "round": rnd, "run": run}, label=f"seed {seed} round {rnd} {run}",
            start_iteration=start_iteration, capture=capture, progress=self.progress,
        )


def run_imp(config: IMPConfig, out: str | Path, *, device: torch.device | str = "cpu",
            data: DataSplits | None = None, progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Run (or resume) an IMP experiment into ``out`` and return its summary (see `summarize`)."""
    return IMPExperiment.prepare(config, out, device=device, data=data, progress=progress).run()
