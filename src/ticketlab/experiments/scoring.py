"""The initial masks of a sparse experiment, computed in memory before its run directory is claimed.

Pruning at init scores θ0 (SNIP, GraSP, SynFlow, magnitude, random); dynamic sparse training
starts from a random layer-wise mask. Both are pure functions of the config and the seed, so they
can be computed before anything is written: a mask that prunes a whole layer ("layer collapse"),
the ticket's or a control's, is then refused before ``--out`` is touched and before any training,
naming the mask that collapses.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..data import DataSplits
from ..errors import TicketlabError
from ..groups import GroupLayout
from ..select import NMPattern
from ..structure.granularity import Granularity
from ..masks import Mask
from ..methods import ScoringContext
from ..methods.pai import prune_at_init
from ..models import create_model
from ..seeding import generator
from ..targets import prunable_parameters
from ..units.base import layout_for

#: (seed, density, invert): one initial mask of a sparse experiment (invert: the ``invert`` control).
MaskKey = tuple[int, float, bool]


@dataclass(frozen=True)
class ScoredMask:
    """A mask and the seconds its scoring took."""

    mask: Mask
    seconds: float


class MaskScorer:
    """Computes the initial masks of a `PruneInitConfig` / `SparseTrainConfig` (``config``) on ``data``, on ``device``."""

    def __init__(self, config, data: DataSplits, device: torch.device):
        self.config, self.data, self.device = config, data, torch.device(device)

    def theta0(self, seed: int) -> dict[str, torch.Tensor]:
        """θ0 of ``seed`` (the state the experiment stores as ``init.safetensors``)."""
        model = create_model(self.config.model, self.data.input_shape, self.data.num_classes, seed=seed,
                             width=self.config.width)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    @property
    def pattern(self) -> NMPattern | None:
        """The config's N:M pattern (None unless ``--granularity N:M``)."""
        return Granularity.parse(getattr(self.config, "granularity", None)).pattern

    def layout(self, model: torch.nn.Module) -> GroupLayout | None:
        """The groups pruned whole at the config's granularity (None: single weights), built once:
        it depends on the architecture only."""
        if not hasattr(self, "_layout"):
            self._layout = layout_for(self.config, self.data, model)
        return self._layout

    def score_batches(self, seed: int) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """``score_batches`` seeded batches of training examples for SNIP / GraSP."""
        cfg, n = self.config, len(self.data.train_y)
        order = torch.randperm(n, generator=generator(seed, "score-batches"))
        size = min(cfg.score_batch_size, n)
        batches = []
        for b in range(cfg.score_batches):
            index = order[(b * size) % n: (b * size) % n + size]
            batches.append((self.data.train_x[index].to(self.device), self.data.train_y[index].to(self.device)))
        return tuple(batches)

    def score(self, seed: int, density: float, *, invert: bool = False,
              theta0: dict[str, torch.Tensor] | None = None) -> ScoredMask:
        """The initial mask of one (seed, density), or of its ``invert`` control."""
        cfg = self.config
        model = create_model(cfg.model, self.data.input_shape, self.data.num_classes, seed=seed, width=cfg.width)
        model.load_state_dict(theta0 if theta0 is not None else self.theta0(seed))
        model.to(self.device)
        params = prunable_parameters(model, ignore=cfg.ignore)
        label = ("invert" if invert else "mask", density)
        if cfg.kind == "sparse-train":
            method, scope, iterations = "random", "layer", 1
            context = ScoringContext(generator=generator(seed, "dst-init", *label))
        else:
            method, scope, iterations = cfg.method, cfg.scope, cfg.synflow_iterations
            batches = self.score_batches(seed) if cfg.method in ("snip", "grasp") else ()
            context = ScoringContext(generator=generator(seed, "scores", *label), batches=batches,
                                     input_shape=self.data.input_shape, synflow_double=cfg.synflow_double)
        started = time.perf_counter()
        mask = prune_at_init(model, params, density, method=method, scope=scope, distribution=cfg.distribution,
                             context=context, invert=invert, synflow_iterations=iterations,
                             layout=self.layout(model), pattern=self.pattern)
        return ScoredMask(Mask({n: t.cpu() for n, t in mask.items()}), time.perf_counter() - started)

    def score_all(self, keys: Iterable[MaskKey]) -> dict[MaskKey, ScoredMask]:
        """Every mask in ``keys`` (θ0 built once per seed), then the collapse check on all of them."""
        out: dict[MaskKey, ScoredMask] = {}
        theta0: dict[int, dict[str, torch.Tensor]] = {}
        for seed, density, invert in keys:
            if seed not in theta0:
                theta0[seed] = self.theta0(seed)
            out[(seed, density, invert)] = self.score(seed, density, invert=invert, theta0=theta0[seed])
        if not self.config.allow_collapse:
            refuse_collapse(self.config.method, out)
        return out


def refuse_collapse(method: str, masks: dict[MaskKey, ScoredMask]) -> None:
    """A TicketlabError naming the first mask (ticket or control) that prunes a whole layer."""
    for (seed, density, invert), scored in masks.items():
        collapsed = scored.mask.collapsed_layers()
        if collapsed:
            which = "the invert control's mask" if invert else f"the {method} mask"
            raise TicketlabError(
                f"At density {density:g} (seed {seed}), {which} prunes every weight of {', '.join(collapsed)} "
                "(layer collapse); pass --allow-collapse to train it anyway"
                + (" or drop the invert control." if invert else ".")
            )
