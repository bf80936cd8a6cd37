"""Calibration statistics of a block's target layers: exactly what the one-shot method needs.

Forward hooks on the target layers see each calibration batch's inputs ``x`` (tokens, in). Layers
fed the very same tensor (q/k/v of attention, gate/up of a gated MLP) share one accumulator, so
their statistic is computed once. Per the method's declaration (`ticketlab.methods.oneshot`):

* ``gram``  — ``G = Σ x xᵀ`` (in, in) fp32 (SparseGPT); the reconstruction error is then exact:
  ``‖(W−Ŵ)X‖² / ‖WX‖² = tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)``;
* ``norms`` — ``Σ_t x_tj²`` (in,) fp32 (Wanda);
* ``none``  — nothing (magnitude).

Without a Gram the report's reconstruction error is measured on a deterministic subsample of the
calibration tokens (evenly spaced, at most `ERROR_TOKENS` per input), kept as rows (tokens, in):
``‖X_s ΔWᵀ‖² / ‖X_s Wᵀ‖²`` — O(tokens · in) memory instead of O(in²); the report says which.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import TicketlabError
from ..memory import row_slices
from ..methods.oneshot import LayerStatistics, Statistics
from .adapters import TargetLayer

#: Token rows kept per distinct input to measure the reconstruction error without a Gram matrix.
ERROR_TOKENS = 512


class InputAccumulator:
    """One distinct input tensor's statistics, over all calibration batches."""

    def __init__(self, features: int, kind: Statistics, device: torch.device, rows_per_call: int):
        self.kind = kind
        self.tokens = 0
        self.gram = torch.zeros(features, features, dtype=torch.float32, device=device) if kind == "gram" else None
        self.sq_norms = torch.zeros(features, dtype=torch.float32, device=device) if kind == "norms" else None
        self.rows_per_call = rows_per_call if kind != "gram" else 0
        self._samples: list[torch.Tensor] = []
        self.last_input: torch.Tensor | None = None

    def add(self, x: torch.Tensor, token_mask: torch.Tensor | None) -> None:
        """Accumulate one call's inputs ``x`` (..., in); padding tokens (``token_mask`` False) are skipped."""
        x = x.reshape(-1, x.shape[-1])
        if token_mask is not None and x.shape[0] == token_mask.numel():
            x = x[token_mask.reshape(-1)]
        x = x.to(torch.float32)
        self.tokens += x.shape[0]
        if self.gram is not None:
            self.gram.addmm_(x.t(), x)
        elif self.sq_norms is not None:
            self.sq_norms.add_(x.square().sum(dim=0))
        if self.rows_per_call and x.shape[0]:
            take = min(self.rows_per_call, x.shape[0])
            index = torch.linspace(0, x.shape[0] - 1, take, device=x.device).round().long()
            self._samples.append(x.index_select(0, index))

    def statistics(self) -> LayerStatistics:
        return LayerStatistics(tokens=self.tokens, sq_norms=self.sq_norms, gram=self.gram)

    def samples(self) -> torch.Tensor | None:
        """The kept token rows (tokens, in), or None when the error comes from the Gram matrix."""
        return torch.cat(self._samples) if self._samples else None

    def set_samples(self, parts: list[torch.Tensor]) -> None:
        """Replace the kept token rows (every rank's rows, gathered in rank order)."""
        self._samples = list(parts)


class StatisticsHooks:
    """Forward hooks on one block's target layers, one `InputAccumulator` per distinct input tensor.

    ``kind`` is the statistic every layer needs, or a layer name -> kind mapping (structured pruning
    needs the Gram matrix of the layers it refits only); layers sharing an input share the richer
    of their kinds."""

    def __init__(self, layers: list[TargetLayer], kind: Statistics | Mapping[str, Statistics], device: torch.device,
                 calls: int):
        self.kind, self.device = kind, device
        self.rows_per_call = max(1, math.ceil(ERROR_TOKENS / max(1, calls)))
        self.accumulators: dict[str, InputAccumulator] = {}
        self.owners: set[str] = set()
        self.token_mask: torch.Tensor | None = None
        self._first: dict[int, tuple[torch.Tensor, InputAccumulator]] = {}
        self._handles = [layer.module.register_forward_hook(self._hook(layer)) for layer in layers]

    def _hook(self, layer: TargetLayer) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0]
            accumulator = self.accumulators.get(layer.name)
            if accumulator is None:  # first call: a layer reading an input already seen shares its accumulator
                key = id(x)
                if key in self._first and self._first[key][0] is x:
                    accumulator = self._first[key][1]
                    if self._kind_of(layer.name) == "gram" and accumulator.gram is None:
                        raise RuntimeError(f"{layer.name} needs a Gram matrix of an input it shares with a layer "
                                           "that does not: give the layers reading one input the same statistic.")
                else:
                    accumulator = InputAccumulator(layer.in_features, self._kind_of(layer.name), self.device,
                                                   self.rows_per_call)
                    self._first[key] = (x, accumulator)
                    self.owners.add(layer.name)
                self.accumulators[layer.name] = accumulator
            if layer.name in self.owners:
                accumulator.add(x, self.token_mask)
                accumulator.last_input = x
            elif accumulator.last_input is not x:
                raise RuntimeError(f"{layer.name} no longer shares its input with the layer it shared it with.")
        return hook

    def _kind_of(self, name: str) -> Statistics:
        return self.kind if isinstance(self.kind, str) else self.kind[name]

    def end_call(self) -> None:
        self._first.clear()   # sharing is settled by the first call; drop its tensors
        for accumulator in self.accumulators.values():
            accumulator.last_input = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._first.clear()


@torch.no_grad()
def relative_reconstruction_error(weight: torch.Tensor, pruned: torch.Tensor | None, gram: torch.Tensor,
                                  keep: torch.Tensor | None = None) -> float:
    """``‖(W − Ŵ)X‖² / ‖WX‖²`` from ``G = X Xᵀ``: ``tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)`` (weights (out, in)).

    ``pruned`` is Ŵ, or None with ``keep`` (bool, out x in) for ``Ŵ = W ⊙ keep``. Computed a slice of
    rows at a time (`ticketlab.memory.row_slices`): both traces are sums over rows.
    """
    return _relative(weight, pruned, keep, lambda D: ((D @ gram) * D).sum())


@torch.no_grad()
def sampled_reconstruction_error(weight: torch.Tensor, pruned: torch.Tensor | None, samples: torch.Tensor,
                                 keep: torch.Tensor | None = None) -> float:
    """``‖X_s (W − Ŵ)ᵀ‖² / ‖X_s Wᵀ‖²`` on token rows ``samples`` (tokens, in); ``pruned`` / ``keep`` as in
    `relative_reconstruction_error`."""
    X = samples.to(device=weight.device, dtype=torch.float32)
    return _relative(weight, pruned, keep, lambda D: (X @ D.t()).square().sum())


@torch.no_grad()
def _relative(weight: torch.Tensor, pruned: torch.Tensor | None, keep: torch.Tensor | None,
              energy: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """Σ energy(W − Ŵ) / Σ energy(W) over slices of rows (fp32); 0 for a zero layer left zero."""
    if (pruned is None) == (keep is None):
        raise TicketlabError("A reconstruction error needs exactly one of the pruned weights or a keep mask.")
    num = torch.zeros((), dtype=torch.float64, device=weight.device)
    den = torch.zeros((), dtype=torch.float64, device=weight.device)
    for rows in row_slices(weight.shape[0], weight.shape[1], weight.device):
        W = weight[rows].detach().to(torch.float32)
        den += energy(W).double()
        D = W * ~keep[rows] if pruned is None else W - pruned[rows].detach().to(torch.float32)
        num += energy(D).double()
    num_f, den_f = float(num), float(den)
    if den_f <= 0.0:
        return 0.0 if num_f <= 0.0 else float("inf")
    return max(num_f, 0.0) / den_f


def layer_error(weight: torch.Tensor, pruned: torch.Tensor | None, keep: torch.Tensor,
                accumulator: InputAccumulator) -> tuple[float, str]:
    """The layer's relative reconstruction error and how it was measured; ``pruned`` None means the
    method only masked (``Ŵ = W ⊙ keep``), which is never materialised whole."""
    keep_arg = keep if pruned is None else None
    if accumulator.gram is not None:
        return relative_reconstruction_error(weight, pruned, accumulator.gram, keep_arg), "gram"
    samples = accumulator.samples()
    if samples is None:
        return 0.0, "none"
    return sampled_reconstruction_error(weight, pruned, samples, keep_arg), f"{samples.shape[0]} sampled tokens"


__all__ = ["ERROR_TOKENS", "InputAccumulator", "StatisticsHooks", "layer_error", "relative_reconstruction_error",
           "sampled_reconstruction_error"]
