"""Mask overlap: how much two masks agree, per layer and over all layers.

For two masks A and B of the same layout (the same parameter names and shapes), each layer gives:

* **Jaccard** ``|A ∩ B| / |A ∪ B|`` over the kept weights: 1 for identical masks, 0 for disjoint
  ones. Convention: when the union is empty (neither mask keeps a weight of the layer) the Jaccard
  index is 1 — the two masks agree everywhere there, so "J = 1 exactly when A = B" holds.
* **Hamming distance**: the number of positions where the masks differ (``|A ∪ B| − |A ∩ B|``),
  and that number over the layer's positions (the normalised distance of early-bird tickets).
* **chance Jaccard**: what two independent, uniformly random masks with the same kept counts per
  layer would give: ``E|A ∩ B| = k_A·k_B / n`` per layer, Jaccard as the ratio of the expected
  intersection and union (exact as layers grow). A Jaccard near chance means "no shared structure".

"Overall" pools every layer's positions (sums of counts, not a mean of per-layer ratios), so a big
layer weighs as much as its weights. IMP masks only shrink, so the Jaccard between rounds r−1 and r
is exactly density_r / density_{r−1}: the interesting question there is whether *different seeds*
find the same ticket.

This module also finds masks on disk (`resolve_mask_path`), summarises the masks of an IMP run
directory round by round (`imp_run_overlap`) and draws overlap panels for the plots of `report`
and `compare` (`draw_heatmap`, `draw_round_overlap`). It reads run directories, never writes them.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import TicketlabError
from ..masks import Mask

#: What a directory may hold, in order of preference: the mask a dynamic-sparse unit ended training
#: with, the mask a unit trained with (IMP round, control, prune-init cell; DST: the initial mask),
#: the masks of a one-shot pruned language model.
MASK_FILE_NAMES: tuple[str, ...] = ("final_mask.safetensors", "mask.safetensors", "masks.safetensors")
#: Metrics a matrix of overlaps can show (attributes of `Overlap`).
METRICS: tuple[str, ...] = ("jaccard", "hamming_fraction", "chance_jaccard")


# --- the numbers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Overlap:
    """Counts of one layer, or of all layers pooled: ``positions`` weights, of which ``kept_a`` are
    kept by A, ``kept_b`` by B, ``both`` by both; ``expected_both`` is ``both`` for random masks."""

    positions: int
    kept_a: int
    kept_b: int
    both: int
    expected_both: float

    @property
    def either(self) -> int:
        """|A ∪ B|: weights kept by at least one mask."""
        return self.kept_a + self.kept_b - self.both

    @property
    def jaccard(self) -> float:
        """|A ∩ B| / |A ∪ B|; 1.0 when the union is empty (the masks agree everywhere)."""
        return self.both / self.either if self.either else 1.0

    @property
    def hamming(self) -> int:
        """Positions where the masks differ."""
        return self.either - self.both

    @property
    def hamming_fraction(self) -> float:
        """`hamming` over the number of positions (0.0 for a layer without positions)."""
        return self.hamming / self.positions if self.positions else 0.0

    @property
    def chance_jaccard(self) -> float:
        """Jaccard of random masks with these kept counts (ratio of expectations; 1.0 if both empty)."""
        union = self.kept_a + self.kept_b - self.expected_both
        return self.expected_both / union if union > 0 else 1.0

    @property
    def density_a(self) -> float:
        return self.kept_a / self.positions if self.positions else 1.0

    @property
    def density_b(self) -> float:
        return self.kept_b / self.positions if self.positions else 1.0

    def __add__(self, other: "Overlap") -> "Overlap":
        return Overlap(self.positions + other.positions, self.kept_a + other.kept_a, self.kept_b + other.kept_b,
                       self.both + other.both, self.expected_both + other.expected_both)

    def swapped(self) -> "Overlap":
        """The same counts seen from B (A and B exchanged)."""
        return Overlap(self.positions, self.kept_b, self.kept_a, self.both, self.expected_both)

    def to_json(self) -> dict[str, Any]:
        return {"positions": self.positions, "kept_a": self.kept_a, "kept_b": self.kept_b, "both": self.both,
                "either": self.either, "density_a": self.density_a, "density_b": self.density_b,
                "jaccard": self.jaccard, "chance_jaccard": self.chance_jaccard, "hamming": self.hamming,
                "hamming_fraction": self.hamming_fraction}


def layer_overlap(a: torch.Tensor, b: torch.Tensor) -> Overlap:
    """`Overlap` of two bool tensors of one shape (any shape; compared position by position)."""
    positions, kept_a, kept_b = a.numel(), int(a.sum()), int(b.sum())
    expected = kept_a * kept_b / positions if positions else 0.0
    return Overlap(positions, kept_a, kept_b, int((a & b).sum()), expected)


@dataclass(frozen=True)
class MaskOverlap:
    """Per-layer `Overlap` of two masks (in A's layer order) and the pooled ``overall``."""

    layers: dict[str, Overlap]

    @property
    def overall(self) -> Overlap:
        return sum(self.layers.values(), Overlap(0, 0, 0, 0, 0.0))

    def to_json(self) -> dict[str, Any]:
        return {"layers": {n: o.to_json() for n, o in self.layers.items()}, "overall": self.overall.to_json()}


def layout_difference(a: Mask, b: Mask, names: tuple[str, str] = ("A", "B")) -> str | None:
    """The first difference in layout between ``a`` and ``b`` as a phrase, or None if they match.

    Layer order does not matter; names and shapes do (positions must mean the same weight).
    """
    for first, second, (one, other) in ((a, b, names), (b, a, names[::-1])):
        missing = [n for n in first if n not in second]
        if missing:
            return f"mask {one} has layer {missing[0]!r}, which mask {other} lacks"
    for name in a:
        if a[name].shape != b[name].shape:
            return (f"layer {name!r} has shape {tuple(a[name].shape)} in mask {names[0]} "
                    f"but {tuple(b[name].shape)} in mask {names[1]}")
    return None


def compare_masks(a: Mask, b: Mask, names: tuple[str, str] = ("A", "B")) -> MaskOverlap:
    """Per-layer and overall overlap of ``a`` and ``b``; a TicketlabError if their layouts differ.

    ``names`` label the masks in that error (the command line passes the paths).
    """
    difference = layout_difference(a, b, names)
    if difference is not None:
        raise TicketlabError(f"The masks cannot be compared: {difference}.")
    return MaskOverlap({n: layer_overlap(a[n], b[n]) for n in a})


@dataclass(frozen=True)
class OverlapMatrix:
    """Pairwise `Overlap` of labelled masks: ``cells[i][j]`` compares mask i (as A) with mask j."""

    labels: tuple[str, ...]
    cells: tuple[tuple[Overlap, ...], ...]

    def values(self, metric: str = "jaccard") -> list[list[float]]:
        """The ``len(labels) × len(labels)`` matrix of one metric (see `METRICS`)."""
        if metric not in METRICS:
            raise TicketlabError(f"Unknown overlap metric {metric!r}; choose one of {', '.join(METRICS)}.")
        return [[getattr(cell, metric) for cell in row] for row in self.cells]

    def mean_off_diagonal(self, metric: str = "jaccard") -> float | None:
        """Mean of the metric over pairs of different masks (None with fewer than two masks)."""
        values = self.values(metric)
        pairs = [values[i][j] for i, j in itertools.combinations(range(len(values)), 2)]
        return sum(pairs) / len(pairs) if pairs else None


def overlap_matrix(masks: Mapping[str, Mask]) -> OverlapMatrix:
    """Every pair of ``masks`` (label -> mask) compared once; the matrix is filled symmetrically."""
    labels = tuple(masks)
    grid: list[list[Overlap | None]] = [[None] * len(labels) for _ in labels]
    for i, j in itertools.combinations_with_replacement(range(len(labels)), 2):
        overall = compare_masks(masks[labels[i]], masks[labels[j]], (repr(labels[i]), repr(labels[j]))).overall
        grid[i][j], grid[j][i] = overall, overall.swapped()
    return OverlapMatrix(labels, tuple(tuple(row) for row in grid))  # type: ignore[arg-type]


def format_overlap(overlap: MaskOverlap, names: tuple[str, str] = ("A", "B")) -> str:
    """A plain-text table: one row per layer and one for all layers pooled."""
    header = ["layer", "positions", f"{names[0]} % kept", f"{names[1]} % kept", "kept by both", "Jaccard",
              "chance", "Hamming", "Hamming %"]
    rows = [header] + [_overlap_row(n, o) for n, o in [*overlap.layers.items(), ("overall", overlap.overall)]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, lines[1])
    return "\n".join(lines)


def _overlap_row(name: str, o: Overlap) -> list[str]:
    return [name, str(o.positions), f"{100 * o.density_a:.2f}", f"{100 * o.density_b:.2f}", str(o.both),
            f"{o.jaccard:.4f}", f"{o.chance_jaccard:.4f}", str(o.hamming), f"{100 * o.hamming_fraction:.2f}"]


# --- masks on disk ----------------------------------------------------------------------------------
def resolve_mask_path(path: str | os.PathLike) -> Path:
    """The mask file ``path`` names: the file itself, or the mask a directory holds.

    A directory may be a unit of a run (``RUN/seed-0/round-03``, ``.../controls/random``,
    ``COMPARE/snip/seed-0/density-0.05``) or a one-shot LLM output; it is searched for the names of
    `MASK_FILE_NAMES` in that order, so a RigL / SET cell gives its final mask (name
    ``mask.safetensors`` to get the initial one). Anything else is a TicketlabError.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise TicketlabError(f"{str(path)!r} does not exist; give a mask file or a directory holding one.")
    if not path.is_dir():
        raise TicketlabError(f"{str(path)!r} is neither a mask file nor a directory.")
    for name in MASK_FILE_NAMES:
        if (path / name).is_file():
            return path / name
    example = _example_below(path)
    hint = f", e.g. {str(example.parent)!r}" if example is not None else ""
    raise TicketlabError(f"{str(path)!r} holds no {' / '.join(MASK_FILE_NAMES)}; name a round or cell "
                         f"directory{hint}, or a mask file.")


def _example_below(path: Path) -> Path | None:
    """The first mask file one to three directories below ``path`` (for the hint of an error)."""
    for depth in (1, 2, 3):
        pattern = "/".join(["*"] * depth) + "/mask.safetensors"
        found = sorted(path.glob(pattern))
        if found:
            return found[0]
    return None


def load_mask(path: str | os.PathLike) -> Mask:
    """The mask at ``path`` (see `resolve_mask_path`); unreadable or malformed files are TicketlabErrors."""
    return Mask.load(resolve_mask_path(path))


# --- an IMP run directory ----------------------------------------------------------------------------
_SEED, _ROUND = re.compile(r"^seed-(\d+)$"), re.compile(r"^round-(\d+)$")


def imp_mask_paths(run_dir: str | os.PathLike) -> dict[int, dict[int, Path]]:
    """seed -> round -> ``mask.safetensors`` of every ticket mask already written under ``run_dir``.

    Layout of `ticketlab.lottery.imp`: ``RUN/seed-<s>/round-<rr>/mask.safetensors``. Rounds still
    to come simply have no file yet; a directory of another kind of run gives ``{}``.
    """
    out: dict[int, dict[int, Path]] = {}
    run_dir = Path(run_dir)
    for seed_dir in sorted(run_dir.iterdir()) if run_dir.is_dir() else ():
        seed = _SEED.match(seed_dir.name)
        if seed is None or not seed_dir.is_dir():
            continue
        rounds = {int(m.group(1)): d / "mask.safetensors"
                  for d in seed_dir.iterdir() if (m := _ROUND.match(d.name)) and (d / "mask.safetensors").is_file()}
        if rounds:
            out[int(seed.group(1))] = dict(sorted(rounds.items()))
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class RunOverlap:
    """Overlap of an IMP run's ticket masks, round by round (index i of each list is ``rounds[i]``).

    ``consecutive``: Jaccard of round r−1's and round r's mask, mean over seeds (None for the first
    round listed); ``between_seeds``: mean Jaccard over pairs of seeds' masks of one round, with
    ``chance`` the same for random masks of those per-layer densities (None with fewer than two
    seeds). ``matrix`` is the heat-map described by ``matrix_title``.
    """

    rounds: list[int]
    densities: list[float]
    consecutive: list[float | None]
    between_seeds: list[float | None]
    chance: list[float | None]
    matrix: OverlapMatrix
    matrix_title: str


def imp_run_overlap(run_dir: str | os.PathLike) -> RunOverlap | None:
    """`RunOverlap` of an IMP run directory; None while it holds fewer than two rounds' masks.

    Rounds are read one at a time (at most two rounds' masks in memory), so large models are fine.
    """
    paths = imp_mask_paths(run_dir)
    rounds = sorted({r for per_seed in paths.values() for r in per_seed})
    if len(rounds) < 2:
        return None
    densities, consecutive, between, chance = [], [], [], []
    previous: dict[int, Mask] = {}
    for rnd in rounds:
        current = {s: Mask.load(p[rnd]) for s, p in paths.items() if rnd in p}
        densities.append(sum(m.density() for m in current.values()) / len(current))
        steps = [compare_masks(previous[s], m).overall.jaccard for s, m in current.items() if s in previous]
        consecutive.append(sum(steps) / len(steps) if steps else None)
        seeds = overlap_matrix({f"seed {s}": m for s, m in current.items()})
        between.append(seeds.mean_off_diagonal("jaccard"))
        chance.append(seeds.mean_off_diagonal("chance_jaccard"))
        previous = current
    matrix, title = _imp_heatmap(Path(run_dir), paths)
    return RunOverlap(rounds, densities, consecutive, between, chance, matrix, title)


def _imp_heatmap(run_dir: Path, paths: dict[int, dict[int, Path]]) -> tuple[OverlapMatrix, str]:
    """Seeds × seeds (plus the first seed's random / shuffled controls) at the sparsest round
    that two of them reach; with one seed and no control there, round × round of that seed."""
    shared = [r for r in sorted({r for p in paths.values() for r in p}) if sum(r in p for p in paths.values()) > 1]
    seed0 = next(iter(paths))
    rnd = shared[-1] if shared else max(paths[seed0])
    labelled = {f"seed {s}": p[rnd] for s, p in paths.items() if rnd in p}
    first = min(s for s, p in paths.items() if rnd in p)
    for control in ("random", "shuffle"):  # reinit reuses the ticket's mask: nothing to compare
        control_path = paths[first][rnd].parent / "controls" / control / "mask.safetensors"
        if control_path.is_file():
            labelled[f"seed {first} {control}"] = control_path
    if len(labelled) > 1:
        return overlap_matrix({k: Mask.load(v) for k, v in labelled.items()}), f"mask Jaccard at round {rnd}"
    by_round = {f"round {r}": Mask.load(p) for r, p in paths[seed0].items()}
    return overlap_matrix(by_round), f"mask Jaccard between rounds, seed {seed0}"


# --- drawing (matplotlib axes given by the caller) -----------------------------------------------------
def draw_heatmap(ax: Any, matrix: OverlapMatrix, title: str, metric: str = "jaccard") -> None:
    """A labelled heat-map of one metric on ``ax``, values written in the cells (0..1 colour scale)."""
    values = matrix.values(metric)
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
    ticks = range(len(matrix.labels))
    ax.set_xticks(list(ticks), labels=list(matrix.labels), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(list(ticks), labels=list(matrix.labels), fontsize=8)
    size = 8 if len(values) <= 8 else 6
    for i, j in itertools.product(ticks, ticks):
        ax.text(j, i, f"{values[i][j]:.2f}", ha="center", va="center", fontsize=size,
                color="black" if values[i][j] > 0.6 else "white")
    chance = matrix.mean_off_diagonal("chance_jaccard") if metric == "jaccard" else None
    ax.set_title(title + (f" (random masks: {chance:.2f})" if chance is not None else ""), fontsize=9)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def draw_round_overlap(ax: Any, overlap: RunOverlap) -> None:
    """Jaccard between consecutive rounds and between seeds vs % of weights remaining (log x,
    dense on the left, like the accuracy panels above it)."""
    xs = [100 * d for d in overlap.densities]
    for label, ys, style in (("round r vs r-1 (mean over seeds)", overlap.consecutive, "o-"),
                             ("between seeds (mean over pairs)", overlap.between_seeds, "s-"),
                             ("random masks, same densities", overlap.chance, "--")):
        points = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if points:
            ax.plot(*zip(*points), style, markersize=3, label=label)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("% of weights remaining")
    ax.set_ylabel("mask Jaccard |A∩B| / |A∪B|")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

