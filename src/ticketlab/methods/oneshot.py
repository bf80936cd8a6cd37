"""One-shot (post-training, layer-wise) pruning methods behind one small interface and one registry.

Each method declares the calibration statistics it needs, so the engine (`ticketlab.llm.engine`)
computes exactly those and nothing more:

* ``none``  — magnitude pruning reads only the weights;
* ``norms`` — Wanda needs ``Σ_t x_tj²`` per input feature (the diagonal of ``Σ x xᵀ``): O(in)
  memory and one fused reduction per calibration batch;
* ``gram``  — SparseGPT needs the whole ``G = Σ x xᵀ`` (in, in) in fp32.

A method maps a weight (out, in) in ``nn.Linear`` orientation and the statistics of its inputs to
``(new_weight or None, keep)``: ``keep`` is the bool (out, in) mask on the weight's device,
``new_weight`` the updated fp32 weight for methods that reconstruct (SparseGPT), None for methods
that only choose a mask. Adding a method = one class (in its own module) + one line in
`ONE_SHOT_METHODS`; the CLI's choices come from that registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import torch

from ..errors import TicketlabError
from ..memory import row_slices
from ..select import NMPattern, select_tensors
from .sparsegpt import hessian_factor, lowest_k, sparsegpt_prune_stacked
from .wanda import lowest_k_per_row, row_keep_count, wanda_mask

Statistics = Literal["none", "norms", "gram"]
STATISTICS: tuple[str, ...] = ("none", "norms", "gram")


@dataclass
class LayerStatistics:
    """What the calibration pass measured on one layer's inputs (only what its method asked for).

    ``tokens`` calibration tokens; ``sq_norms`` (in,) ``Σ x_j²`` (fp32); ``gram`` (in, in)
    ``Σ x xᵀ`` (fp32). A Gram implies the norms (its diagonal).
    """

    tokens: int
    sq_norms: torch.Tensor | None = None
    gram: torch.Tensor | None = None

    def norms(self) -> torch.Tensor:
        if self.sq_norms is not None:
            return self.sq_norms
        if self.gram is not None:
            return torch.diagonal(self.gram)
        raise TicketlabError("This method needs input norms, which were not collected.")


class PruneRequest(Protocol):
    """The parts of a one-shot config a method reads (`ticketlab.llm.OneShotConfig` has them)."""

    sparsity: float | None
    blocksize: int
    percdamp: float
    magnitude_scope: str

    @property
    def nm_pattern(self) -> NMPattern | None: ...


class OneShotMethod(ABC):
    """A one-shot method: its name, the statistics it needs, and how it prunes one layer."""

    name: ClassVar[str]
    statistics: ClassVar[Statistics]
    #: True when the method changes the kept weights (not only chooses a mask).
    reconstructs: ClassVar[bool] = False

    @abstractmethod
    def prune(self, weight: torch.Tensor, stats: LayerStatistics, request: PruneRequest, *, name: str,
              cache: dict[Any, Any]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Prune ``weight`` (out, in). ``cache`` is shared by the layers of one block (e.g. a Hessian
        factor computed once for the layers that read the same inputs)."""

    def prune_group(self, weights: list[torch.Tensor], stats: LayerStatistics, request: PruneRequest, *,
                    names: list[str], cache: dict[Any, Any]) -> list[tuple[torch.Tensor | None, torch.Tensor]]:
        """Prune layers that read the same inputs (q/k/v, gate/up); by default one by one."""
        return [self.prune(w, stats, request, name=n, cache=cache) for w, n in zip(weights, names)]


class MagnitudeOneShot(OneShotMethod):
    """``|W|``: per layer, or per output row with ``magnitude_scope="row"``."""

    name = "magnitude"
    statistics = "none"

    def prune(self, weight, stats, request, *, name, cache):
        rows, cols = weight.shape
        scores = weight.detach().to(torch.float32).abs()
        pattern = request.nm_pattern
        if pattern is not None:
            keep = select_tensors({name: scores}, pattern=pattern)[name]
        elif request.magnitude_scope == "row":
            keep = ~lowest_k_per_row(scores, cols - row_keep_count(rows, cols, request.sparsity) // rows)
        else:
            keep = ~lowest_k(scores, int(request.sparsity * rows * cols + 0.5))
        return None, keep.to(weight.device)


class WandaOneShot(OneShotMethod):
    """``|W_ij| · ‖X_j‖₂`` per output row (Sun et al. 2023)."""

    name = "wanda"
    statistics = "norms"

    def prune(self, weight, stats, request, *, name, cache):
        """Row-local (per-row count or N:M), so chosen a slice of rows at a time: the scores and the
        selection's copies never exceed one slice (`ticketlab.memory.row_slices`); same result."""
        pattern = request.nm_pattern
        sparsity = None if pattern is not None else request.sparsity
        norms = stats.norms()
        keep = torch.empty(weight.shape, dtype=torch.bool, device=weight.device)
        for rows in row_slices(weight.shape[0], weight.shape[1], weight.device):
            keep[rows] = wanda_mask(weight[rows], norms, sparsity=sparsity, pattern=pattern)
        return None, keep


class SparseGPTOneShot(OneShotMethod):
    """Blocked OBS reconstruction with an fp32 Hessian (Frantar & Alistarh 2023); the Hessian factor
    is computed once per distinct input (``cache``) and shared by the layers that read it."""

    name = "sparsegpt"
    statistics = "gram"
    reconstructs = True

    def prune(self, weight, stats, request, *, name, cache):
        return self.prune_group([weight], stats, request, names=[name], cache=cache)[0]

    def prune_group(self, weights, stats, request, *, names, cache):
        """The layers sharing one Hessian pruned in one pass with their rows stacked (rows are
        independent given H; each layer keeps its own exact count), the factor computed once."""
        if stats.gram is None:
            raise TicketlabError(f"SparseGPT needs the Gram matrix of {names[0]}'s inputs, which was not collected.")
        key = ("factor", id(stats.gram))
        if key not in cache:
            cache[key] = hessian_factor(stats.gram.to(weights[0].device), request.percdamp, name=", ".join(names))
        pattern = request.nm_pattern
        return sparsegpt_prune_stacked(weights, stats.gram, sparsity=None if pattern is not None else request.sparsity,
                                       pattern=pattern, factor=cache[key], blocksize=request.blocksize,
                                       percdamp=request.percdamp, names=names)


ONE_SHOT_METHODS: dict[str, OneShotMethod] = {m.name: m for m in (MagnitudeOneShot(), WandaOneShot(),
                                                                   SparseGPTOneShot())}


def one_shot_method(name: str) -> OneShotMethod:
    if name not in ONE_SHOT_METHODS:
        raise TicketlabError(f"Unknown one-shot pruning method {name!r}; choose one of {', '.join(ONE_SHOT_METHODS)}.")
    return ONE_SHOT_METHODS[name]


__all__ = ["LayerStatistics", "ONE_SHOT_METHODS", "OneShotMethod", "STATISTICS", "Statistics", "one_shot_method"]
