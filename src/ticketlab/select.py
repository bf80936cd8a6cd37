"""The one selection routine: scores -> `Mask`.

Every method (magnitude, SNIP, Wanda, ...) produces a score per weight; this module turns scores
into a mask, written once for every comparison group:

* ``scope="global"``: one ranking across all layers, keep the top ``k`` overall;
* ``scope="layer"``: keep the top ``k_l`` of each layer;
* ``scope="row"``: keep the top ``k_l // rows`` of each output row (dim 0) of each layer;
* ``pattern=NMPattern(n, m)``: keep the ``n`` best of every ``m`` consecutive weights along the
  input dimension (the last dimension after flattening everything but dim 0).

Exact-k and deterministic: ranking uses a stable sort, so among equal scores the weight with the
lower flat index is kept. Weights outside ``within`` (already pruned) can never be kept, which is
what makes masks only shrink across IMP rounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from .errors import TicketlabError
from .masks import Mask

Scope = Literal["global", "layer", "row"]
SCOPES: tuple[str, ...] = ("global", "layer", "row")


@dataclass(frozen=True)
class NMPattern:
    """Keep ``n`` of every ``m`` consecutive weights along the input dimension (2:4 -> n=2, m=4)."""

    n: int
    m: int

    def __post_init__(self) -> None:
        if not (0 < self.n < self.m):
            raise TicketlabError(f"An N:M pattern needs 0 < N < M (got {self.n}:{self.m}).")

    @classmethod
    def parse(cls, text: str) -> "NMPattern":
        try:
            n, m = (int(part) for part in text.split(":"))
        except ValueError:
            raise TicketlabError(f"Cannot read pattern {text!r}: write it as N:M, e.g. 2:4.") from None
        return cls(n, m)

    @property
    def density(self) -> float:
        return self.n / self.m


def _top_k_flat(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask over a 1-D score vector keeping exactly ``k`` entries; ties -> lower index kept.

    Equivalent to taking the first ``k`` entries of a stable descending sort, in O(n): find the
    k-th largest value, keep everything above it, then the lowest-index entries equal to it.
    """
    n = scores.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool)
    if k >= n:
        return torch.ones(n, dtype=torch.bool)
    threshold = torch.kthvalue(scores, n - k + 1).values
    keep = scores > threshold
    missing = k - int(keep.sum())
    if missing:
        ties = torch.nonzero(scores == threshold).flatten()[:missing]
        keep[ties] = True
    return keep


def _prepared(scores: Mapping[str, torch.Tensor], within: Mask | None) -> dict[str, torch.Tensor]:
    """Scores on CPU with already-pruned weights set to -inf; rejects NaN and bad shapes.

    Floating scores keep their dtype (converting is monotone, so it would not change a ranking,
    only cost a copy); integer or bool scores become float64 so that -inf can mark pruned weights.
    """
    out = {}
    for name, score in scores.items():
        s = score.detach().to(device="cpu")
        if not s.is_floating_point():
            s = s.to(torch.float64)
        if torch.isnan(s).any():
            raise TicketlabError(f"The scores for {name!r} contain NaN, so no ranking is possible.")
        if within is not None:
            if name not in within or within[name].shape != s.shape:
                raise TicketlabError(f"The current mask does not cover {name!r} with shape {tuple(s.shape)}.")
            s = s.masked_fill(~within[name], float("-inf"))
        out[name] = s
    return out


def _available(name: str, scores: torch.Tensor, within: Mask | None) -> int:
    return int(within[name].sum()) if within is not None else scores.numel()


def select(
    scores: Mapping[str, torch.Tensor],
    keep: int | Mapping[str, int] | None = None,
    *,
    scope: Scope = "layer",
    pattern: NMPattern | None = None,
    within: Mask | None = None,
) -> Mask:
    """Keep the highest-scoring weights.

    Args:
        scores: name -> score tensor (any shape); higher means more worth keeping.
        keep: for ``scope="global"`` the total number of weights to keep (int); for ``"layer"``
            a per-layer count (dict, or one int for every layer); for ``"row"`` the per-layer
            count, which must be divisible by the layer's number of rows. Ignored with ``pattern``.
        scope: the comparison group (see module docstring).
        pattern: N:M structure instead of a count.
        within: the current mask; only its kept weights are candidates.

    Returns a `Mask` with exactly the requested number of True entries.
    """
    prepared = _prepared(scores, within)
    if pattern is not None:
        return Mask({n: _select_nm(s, pattern, n) for n, s in prepared.items()})
    if keep is None:
        raise TicketlabError("select() needs either a number of weights to keep or an N:M pattern.")
    if scope == "global":
        if not isinstance(keep, int):
            raise TicketlabError("Global selection takes one total count of weights to keep.")
        available = sum(_available(n, s, within) for n, s in prepared.items())
        _check_count(keep, available, "the whole model")
        flat = torch.cat([s.flatten() for s in prepared.values()])
        chosen = _top_k_flat(flat, keep)
        out, offset = {}, 0
        for name, s in prepared.items():
            out[name] = chosen[offset: offset + s.numel()].view(s.shape)
            offset += s.numel()
        return Mask(out)
    if scope not in ("layer", "row"):
        raise TicketlabError(f"Unknown selection scope {scope!r}; choose one of {', '.join(SCOPES)}.")
    counts = {n: keep for n in prepared} if isinstance(keep, int) else dict(keep)
    missing = [n for n in prepared if n not in counts]
    if missing:
        raise TicketlabError(f"No keep count was given for layer {missing[0]!r}.")
    out = {}
    for name, s in prepared.items():
        k = counts[name]
        _check_count(k, _available(name, s, within), repr(name))
        out[name] = _select_rows(s, k, name) if scope == "row" else _top_k_flat(s.flatten(), k).view(s.shape)
    return Mask(out)


def _check_count(k: int, available: int, where: str) -> None:
    if not 0 <= k <= available:
        raise TicketlabError(f"Cannot keep {k} weights in {where}: only {available} are available.")


def _select_rows(scores: torch.Tensor, k: int, name: str) -> torch.Tensor:
    """Keep ``k / rows`` weights in every output row (dim 0) of one layer.

    Same rule as `_top_k_flat`, row by row and vectorised: each row's threshold is its
    ``per_row``-th largest score (``kthvalue``, no sort); everything above is kept, then the
    lowest-index entries equal to the threshold fill the row's quota.
    """
    rows = scores.shape[0]
    if k % rows:
        raise TicketlabError(f"Row-wise selection in {name!r} needs a count divisible by its {rows} rows (got {k}).")
    per_row = k // rows
    flat = scores.reshape(rows, -1)
    cols = flat.shape[1]
    if per_row == 0:
        keep = torch.zeros_like(flat, dtype=torch.bool)
    elif per_row == cols:
        keep = torch.ones_like(flat, dtype=torch.bool)
    else:
        threshold = torch.kthvalue(flat, cols - per_row + 1, dim=1, keepdim=True).values
        keep = flat > threshold
        missing = per_row - keep.sum(dim=1, keepdim=True)
        if bool(missing.any()):
            ties = flat == threshold
            keep |= ties & (ties.cumsum(dim=1) <= missing)
    if bool(torch.isneginf(threshold if 0 < per_row < cols else flat).any()) and \
            bool(torch.isneginf(flat).logical_and(keep).any()):
        raise TicketlabError(f"Row-wise selection in {name!r} would keep weights that are already pruned.")
    return keep.view(scores.shape)


def _select_nm(scores: torch.Tensor, pattern: NMPattern, name: str) -> torch.Tensor:
    """Keep the ``n`` best of every ``m`` consecutive weights along the input dimension."""
    flat = scores.reshape(scores.shape[0], -1) if scores.dim() > 1 else scores.reshape(1, -1)
    if flat.shape[1] % pattern.m:
        raise TicketlabError(
            f"Layer {name!r} has {flat.shape[1]} inputs, not a multiple of {pattern.m}, so {pattern.n}:{pattern.m} cannot apply."
        )
    groups = flat.reshape(-1, pattern.m)
    order = torch.argsort(groups, dim=1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, order[:, : pattern.n], True)
    return keep.view(scores.shape)


def keep_counts_after_pruning(within: Mask, rates: Mapping[str, float]) -> dict[str, int]:
    """Per-layer counts left after pruning ``rates[name]`` of each layer's *remaining* weights.

    The number pruned is ``round_half_up(rate * remaining)``, so a layer keeps
    ``remaining - that``. Layers absent from ``rates`` keep everything.
    """
    counts = {}
    for name, tensor in within.items():
        remaining = int(tensor.sum())
        rate = rates.get(name, 0.0)
        counts[name] = remaining - math.floor(rate * remaining + 0.5)
    return counts


def density_to_count(density: float, total: int) -> int:
    """Number of weights to keep so that ``count / total`` is ``density``, rounded half up."""
    return math.floor(density * total + 0.5)
