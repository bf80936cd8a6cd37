"""Masks on disk: find the mask of a file or a unit directory, and the masks of an IMP run, round
by round, with their overlaps (`RunOverlap`). Reads run directories, never writes them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import TicketlabError
from ..masks import Mask
from .overlap import OverlapMatrix, compare_masks, overlap_matrix

#: What a directory may hold, in order of preference: the mask a dynamic-sparse unit ended training
#: with, the mask a unit trained with (IMP round, control, prune-init cell; DST: the initial mask),
#: the masks of a one-shot pruned language model.
MASK_FILE_NAMES: tuple[str, ...] = ("final_mask.safetensors", "mask.safetensors", "masks.safetensors")

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
