"""``ticketlab recipes``: the named recipes (`ticketlab.recipes`) a training command's ``--recipe`` takes."""

from __future__ import annotations

from typing import Any

import click

from ..recipes import list_recipes


def _flags(values: dict[str, Any]) -> str:
    """A recipe's values as the flags they stand for (``--lr 0.0002 --layer-rate output=0.1``)."""
    parts = []
    for key, value in values.items():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            parts.append(f"--{key}" if item is True else f"--{key} {item:g}" if isinstance(item, float)
                         else f"--{key} {item}")
    return " ".join(parts)


@click.command()
@click.option("--flags", "show_flags", is_flag=True, help="Also print the flags each recipe sets.")
def recipes(show_flags: bool) -> None:
    """List the named recipes: the papers' hyperparameters, used with `ticketlab COMMAND --recipe NAME`.

    A flag given on the command line overrides the recipe's value (see docs/RECIPES.md).
    """
    for recipe in list_recipes():
        click.echo(f"{recipe.name:20s}  ticketlab {recipe.command}")
        click.echo(f"    {recipe.description}")
        click.echo(f"    {recipe.citation}")
        if show_flags:
            click.echo(f"    {_flags(dict(recipe.values))}")


__all__ = ["recipes"]
