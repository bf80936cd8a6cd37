"""Groups of weights that are pruned together, and the arithmetic every selection needs on them.

A `GroupLayout` partitions (part of) a model's prunable weights into *families* of equal-sized
groups. A family is what "per layer" means at a coarse granularity: the channels of one layer (or
of one residual stage, whose members share a channel set), the heads of one attention block, the
tiles of one weight. Each family knows, for the per-weight scores a method computes:

* `Family.scores` — one score per group: an aggregate of its weights' scores, ``"l2"`` (the L2
  norm of the scores: magnitude's group norm) or ``"sum"`` (SNIP, GraSP, SynFlow, Wanda: the
  saliency of removing them all, to first order);
* `Family.alive` — which groups still hold a kept weight under a mask;
* `Family.restrict` — a mask with the dropped groups' weights set False;
* `Family.removed_weights` — exact weight counts, so that a target density in *weights* means
  the same thing at every granularity.

Two kinds of family:

* `SliceFamily` — coupled groups: group ``g`` owns, for every `Member` ``(param, dim, base,
  span)``, the slice ``[base + g*span, base + (g+1)*span)`` of ``param`` along ``dim`` (rows of
  the layers that write the channel, columns of those that read it, ``span`` columns each when a
  conv output is flattened into a Linear layer). Built by `ticketlab.structure.layouts` from the
  dependency graph (vision models) and from the transformer families' tables.
* `BlockFamily` — the ``R x C`` tiles of one weight viewed as a matrix ``(out, rest)``.

This module holds data and arithmetic only (no tracing); `ticketlab.select.select_groups` is the
selection routine that uses it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .errors import TicketlabError

AGGREGATES: tuple[str, ...] = ("l2", "sum", "random")


@dataclass(frozen=True)
class Member:
    """The part of ``param`` one family's groups own: along ``dim`` (0: rows, 1: columns of the
    weight as stored), group ``g`` owns indices ``[base + g*span, base + (g+1)*span)``."""

    param: str
    dim: int
    base: int
    span: int

    def window(self, groups: int) -> tuple[int, int]:
        return self.base, self.base + groups * self.span


def _aggregate(blocks: torch.Tensor, aggregate: str) -> torch.Tensor:
    """``(G, k)`` scores -> ``(G,)`` partial aggregates in float64 (squares for l2, summed later)."""
    values = blocks.to(torch.float64)
    return values.square().sum(dim=1) if aggregate == "l2" else values.sum(dim=1)


class Family:
    """A set of equal-sized groups whose kept count a per-layer selection fixes (see module doc)."""

    name: str
    unit: str
    size: int
    #: The fewest groups a selection may leave (1 for channels and heads: a layer never loses all
    #: of them; 0 for blocks, where an empty layer is a collapse the caller judges).
    minimum: int = 1

    def params(self) -> tuple[str, ...]:
        raise NotImplementedError

    def scores(self, scores: Mapping[str, torch.Tensor], aggregate: str,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``(size,)`` float64 group scores from per-weight ``scores`` (name -> tensor of the param's shape)."""
        if aggregate == "random":
            if generator is None:
                raise TicketlabError("Random group scores need a seeded torch.Generator.")
            return torch.rand(self.size, generator=generator, dtype=torch.float64)
        if aggregate not in AGGREGATES:
            raise TicketlabError(f"Unknown group aggregate {aggregate!r}; choose one of {', '.join(AGGREGATES)}.")
        total = self._partial(scores, aggregate)
        return total.sqrt() if aggregate == "l2" else total

    def _partial(self, scores: Mapping[str, torch.Tensor], aggregate: str) -> torch.Tensor:
        raise NotImplementedError

    def alive(self, mask: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(size,)`` bool: groups with at least one weight kept by ``mask``."""
        raise NotImplementedError

    def group_weights(self, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """Weights one group owns in the unpruned layers of ``shapes`` (what a global ranking
        divides by, so that groups of different sizes compare per weight)."""
        raise NotImplementedError

    def restrict(self, mask: dict[str, torch.Tensor], keep: torch.Tensor) -> None:
        """Set False, in place in ``mask`` (name -> bool tensor), every weight of the groups
        ``keep`` (``(size,)`` bool) drops."""
        raise NotImplementedError


@dataclass
class SliceFamily(Family):
    """Coupled groups: group ``g`` is one slice of every `Member` (see the module docstring).

    ``producers`` / ``consumers`` / ``norms`` name the modules that write, read and normalise the
    channels (compaction slices them); ``label`` is a short human description."""

    name: str
    unit: str
    size: int
    members: tuple[Member, ...]
    producers: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()
    norms: tuple[str, ...] = ()
    label: str = ""
    minimum: int = 1

    def params(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.param for m in self.members))

    def _blocks(self, tensor: torch.Tensor, member: Member) -> torch.Tensor:
        """``(size, span * rest)``: the member's window of ``tensor``, one row per group."""
        start, stop = member.window(self.size)
        part = tensor.narrow(member.dim, start, stop - start).movedim(member.dim, 0)
        return part.reshape(self.size, -1)

    def _partial(self, scores, aggregate):
        total = torch.zeros(self.size, dtype=torch.float64)
        for member in self.members:
            total += _aggregate(self._blocks(scores[member.param].detach(), member), aggregate).cpu()
        return total

    def group_weights(self, shapes):
        total = 0
        for member in self.members:
            shape = shapes[member.param]
            total += member.span * math.prod(shape) // shape[member.dim]
        return total

    def alive(self, mask):
        alive = torch.zeros(self.size, dtype=torch.bool)
        for member in self.members:
            alive |= self._blocks(mask[member.param], member).any(dim=1).cpu()
        return alive

    def restrict(self, mask, keep):
        for member in self.members:
            tensor = mask[member.param]
            start, stop = member.window(self.size)
            factor = keep.to(tensor.device).repeat_interleave(member.span)
            shape = [1] * tensor.dim()
            shape[member.dim] = stop - start
            tensor.narrow(member.dim, start, stop - start).logical_and_(factor.view(shape))


@dataclass
class BlockFamily(Family):
    """The ``rows x cols`` tiles of ``param`` (shape ``shape``) viewed as a matrix ``(out, rest)``;
    tile ``g`` is row-block ``g // (rest / cols)``, column-block ``g % (rest / cols)``."""

    name: str
    shape: tuple[int, ...]
    rows: int
    cols: int
    unit: str = "block"
    minimum: int = 0

    def __post_init__(self) -> None:
        out, rest = self.matrix
        if out % self.rows or rest % self.cols:
            raise TicketlabError(f"Layer {self.name!r} is {out}x{rest} as a matrix, which {self.rows}x{self.cols} "
                                 "blocks do not tile; choose a block size that divides both, or leave the layer "
                                 "unpruned (imp / prune-init --ignore, llm prune --exclude).")
        self.size = (out // self.rows) * (rest // self.cols)

    @property
    def matrix(self) -> tuple[int, int]:
        return self.shape[0], math.prod(self.shape[1:]) if len(self.shape) > 1 else 1

    def params(self) -> tuple[str, ...]:
        return (self.name,)

    def _tiles(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(size, rows * cols)``: one row per tile."""
        out, rest = self.matrix
        tiles = tensor.reshape(out // self.rows, self.rows, rest // self.cols, self.cols).transpose(1, 2)
        return tiles.reshape(self.size, self.rows * self.cols)

    def _partial(self, scores, aggregate):
        return _aggregate(self._tiles(scores[self.name].detach()), aggregate).cpu()

    def group_weights(self, shapes):
        return self.rows * self.cols

    def alive(self, mask):
        return self._tiles(mask[self.name]).any(dim=1).cpu()

    def restrict(self, mask, keep):
        out, rest = self.matrix
        grid = keep.view(out // self.rows, 1, rest // self.cols, 1)
        full = grid.expand(-1, self.rows, -1, self.cols).reshape(self.shape)
        mask[self.name].logical_and_(full.to(mask[self.name].device))


@dataclass
class GroupLayout:
    """The families of one model at one granularity, over the prunable parameters ``shapes``
    (name -> shape, in mask order). ``frozen`` names the groups that cannot be removed safely and
    why (e.g. ``{"fc": "feeds the network's output"}``); their weights are never pruned."""

    shapes: dict[str, tuple[int, ...]]
    families: dict[str, Family] = field(default_factory=dict)
    frozen: dict[str, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Family]:
        return iter(self.families.values())

    def __len__(self) -> int:
        return len(self.families)

    def check_covers(self, names: Sequence[str]) -> None:
        """A TicketlabError unless every family's parameters are among ``names`` (the mask's)."""
        missing = [p for f in self for p in f.params() if p not in names]
        if missing:
            raise TicketlabError(f"The group layout needs {missing[0]!r}, which the mask does not cover.")

    def total_weights(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def kept_weights(self, kept: Mapping[str, int]) -> int:
        """Weights kept when family ``f`` keeps ``kept[f]`` groups (the others all of theirs), from
        the shapes alone: a weight is kept unless a dropped group owns it. Exact for any mix of
        families, since a coupled group removes whole rows and columns."""
        return sum(self._param_kept(name, shape, kept) for name, shape in self.shapes.items())

    def _param_kept(self, name: str, shape: tuple[int, ...], kept: Mapping[str, int]) -> int:
        along = [shape[0], shape[1] if len(shape) > 1 else 1]
        rest = math.prod(shape[2:]) if len(shape) > 2 else 1
        blocks = 0
        for family in self:
            dropped = family.size - kept.get(family.name, family.size)
            if isinstance(family, BlockFamily) and family.name == name:
                blocks += dropped * family.rows * family.cols
            elif isinstance(family, SliceFamily):
                for member in family.members:
                    if member.param == name:
                        along[member.dim] -= dropped * member.span
        return along[0] * along[1] * rest - blocks

    def removal_cost(self, family: Family, along: dict[str, list[int]]) -> int:
        """Weights one more dropped group of ``family`` removes, given ``along`` (param -> kept
        extent of dims 0 and 1, updated in place for the removal); blocks cost their tile."""
        if isinstance(family, BlockFamily):
            return family.rows * family.cols
        removed = 0
        for member in family.members:  # type: ignore[attr-defined]
            shape = self.shapes[member.param]
            rest = math.prod(shape[2:]) if len(shape) > 2 else 1
            removed += member.span * along[member.param][1 - member.dim] * rest
            along[member.param][member.dim] -= member.span
        return removed

    def restricted_to(self, params: Sequence[str]) -> "GroupLayout":
        """The families made only of ``params`` (e.g. one transformer block's), over those shapes
        alone: a selection then builds masks for that block, not the whole model."""
        wanted = [p for p in params if p in self.shapes]
        chosen = {n: f for n, f in self.families.items() if set(f.params()) <= set(wanted)}
        return GroupLayout({p: self.shapes[p] for p in wanted}, chosen, {})

    def subset(self, names: Sequence[str]) -> "GroupLayout":
        """The same layout restricted to the families ``names`` (shapes and frozen reasons kept)."""
        return GroupLayout(self.shapes, {n: self.families[n] for n in names}, self.frozen)

    def uniform_counts(self, density: float) -> dict[str, int]:
        """Groups each family keeps so that every family keeps the same fraction ``f`` of its groups
        (``round_half_up(f · size)``, at least its minimum), with ``f`` the largest fraction whose
        weights kept (`kept_weights`) are at most ``round_half_up(density · total)``: one density in
        weights, at every granularity (bisection on ``f``; counts only move at finitely many ``f``)."""
        budget = math.floor(density * self.total_weights() + 0.5)

        def counts(fraction: float) -> dict[str, int]:
            return {f.name: max(f.minimum, min(f.size, math.floor(fraction * f.size + 0.5))) for f in self}

        if self.kept_weights(counts(0.0)) > budget:
            raise TicketlabError(f"Density {density:g} cannot be reached with whole groups: keeping the fewest "
                                 f"({', '.join(f'{f.minimum} of {f.name}' for f in self)}) leaves "
                                 f"{self.kept_weights(counts(0.0)) / self.total_weights():.4f}; choose a higher density.")
        low, high = 0.0, 1.0
        if self.kept_weights(counts(high)) <= budget:
            return counts(high)
        for _ in range(60):
            middle = (low + high) / 2
            if self.kept_weights(counts(middle)) <= budget:
                low = middle
            else:
                high = middle
        return counts(low)

    def extents(self) -> dict[str, list[int]]:
        """Param -> [rows, columns] of every shape: the starting point of `removal_cost`."""
        return {n: [s[0], s[1] if len(s) > 1 else 1] for n, s in self.shapes.items()}


__all__ = ["AGGREGATES", "BlockFamily", "Family", "GroupLayout", "Member", "SliceFamily"]
