"""``ticketlab masks``: analyses of mask files (overlap between rounds, seeds, methods, controls).

Only parses and prints; the numbers come from `ticketlab.analysis.overlap`. Nothing is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group("masks")
def masks() -> None:
    """Analyse masks: how much do rounds, seeds, methods and controls agree?

    `ticketlab mask FILE` shows one mask's densities.
    """


@click.command("compare")
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON instead of a table.")
def compare_masks(a: Path, b: Path, as_json: bool) -> None:
    """Jaccard overlap and Hamming distance of masks A and B, per layer and overall.

    A and B are mask files or directories holding one: a round (RUN/seed-0/round-03), a control
    (RUN/seed-0/round-03/controls/random), a comparison cell (COMPARE/snip/seed-0/density-0.05; a
    RigL / SET cell gives its final mask). "chance" is the Jaccard of random masks with the same
    per-layer densities.
    """
    from ..analysis.mask_files import load_mask, resolve_mask_path
    from ..analysis.overlap import compare_masks as compare, format_overlap

    paths = (resolve_mask_path(a), resolve_mask_path(b))
    overlap = compare(load_mask(paths[0]), load_mask(paths[1]), (repr(str(paths[0])), repr(str(paths[1]))))
    if as_json:
        click.echo(json.dumps({"a": str(paths[0]), "b": str(paths[1]), **overlap.to_json()}, indent=2))
        return
    click.echo(f"A = {paths[0]}\nB = {paths[1]}\n")
    click.echo(format_overlap(overlap))
    overall = overlap.overall
    click.echo(f"\nOverall Jaccard {overall.jaccard:.4f} (random masks with these densities: "
               f"{overall.chance_jaccard:.4f}); the masks differ at {overall.hamming} of "
               f"{overall.positions} positions ({100 * overall.hamming_fraction:.2f}%).")


masks.add_command(compare_masks)
