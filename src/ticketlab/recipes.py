"""Named recipes: the papers' hyperparameters as command-line defaults (``--recipe NAME``).

A `Recipe` is the set of flags a paper's experiment fixes, keyed by the command's option names
(without ``--``): ``ticketlab imp --recipe conv2-lth`` runs as if those flags were typed, and any
flag given on the command line overrides the recipe's. `recipe_defaults` hands a command its
recipe's values; `list_recipes` feeds ``ticketlab recipes``; docs/RECIPES.md explains each.

Sources. Frankle & Carbin 2019 (Figure 2's table) for LeNet-300-100 and Conv-2/4/6. For ResNet-20
and VGG-16, Frankle et al. 2020 (Table 1) trains with OpenLTH, whose defaults (read from
facebookresearch/open_lth ``models/cifar_resnet.py`` and ``models/cifar_vgg.py``) give the
schedule: SGD, lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, 160 epochs with 10x drops at
epochs 80 and 120 (391 iterations per epoch: 62,560 / 31,280 / 46,920 iterations, which the paper
rounds to 63K / 32K / 48K), global pruning of 20% per round (VGG-16 never prunes ``fc.weight``).
Values that could not be checked against the papers here are said so in the recipe's description.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .errors import TicketlabError

#: The commands a recipe can be made for (those with ``--recipe``).
RECIPE_COMMANDS: tuple[str, ...] = ("imp", "prune-init", "sparse-train")
LTH = "Frankle & Carbin 2019, The Lottery Ticket Hypothesis (ICLR), Figure 2"
LMC = ("Frankle, Dziugaite, Roy & Carbin 2020, Linear Mode Connectivity and the Lottery Ticket Hypothesis (ICML), "
       "Table 1")
_OPTION = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


@dataclass(frozen=True)
class Recipe:
    """One paper's settings for one command: ``values`` maps option names (``"batch-size"``) to
    values as the flag would take them (text or numbers; a tuple for a repeatable flag)."""

    name: str
    command: str
    description: str
    citation: str
    values: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", self.name):
            raise TicketlabError(f"A recipe name is lowercase letters, digits and dashes, not {self.name!r}.")
        if self.command not in RECIPE_COMMANDS:
            raise TicketlabError(f"Recipe {self.name!r} is for {self.command!r}, which takes no --recipe; "
                                 f"recipes are for {', '.join(RECIPE_COMMANDS)}.")
        for key in self.values:
            if not _OPTION.fullmatch(key) or key == "recipe":
                raise TicketlabError(f"Recipe {self.name!r} sets {key!r}, which is not an option name "
                                     "like 'batch-size'.")
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))


def _lth_conv(model: str, lr: float, iterations: int, conv_rate: float) -> Recipe:
    lr_text = f"{lr:.0e}".replace("e-0", "e-")   # 2e-4, as the paper writes it
    return Recipe(
        name=f"{model}-lth", command="imp",
        description=(f"Conv-{model[len('conv'):]} on CIFAR-10: Adam {lr_text}, batch 60, "
                     f"{iterations // 1000}K iterations; "
                     f"layer-wise pruning of {conv_rate:.0%} of the conv, 20% of the fc and 10% of the output "
                     "weights per round, rewinding to theta_0, no augmentation."),
        citation=LTH,
        values={"model": model, "data": "cifar10", "optimizer": "adam", "lr": lr, "batch-size": 60,
                "steps": f"{iterations}it", "scope": "layer", "rate": "0.2",
                "layer-rate": (rf"features\..*={conv_rate:g}", "output=0.1"), "rewind": "0", "augment": "none"},
    )


_SGD_CIFAR = {"data": "cifar10", "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight-decay": 1e-4,
              "batch-size": 128, "steps": "62560it", "lr-drops": "31280it,46920it", "lr-gamma": 0.1,
              "scope": "global", "rate": "0.2", "augment": "crop-flip"}
_UNCHECKED = "not confirmed against the paper here; check its Table 1 and Section 5 before relying on it"

_RECIPES: tuple[Recipe, ...] = (
    Recipe(name="lenet300-lth", command="imp",
           description=("LeNet-300-100 on MNIST: Adam 1.2e-3, batch 60, 50K iterations; layer-wise pruning of "
                        "20% of the hidden and 10% of the output weights per round, rewinding to theta_0."),
           citation=LTH,
           values={"model": "lenet300", "data": "mnist", "optimizer": "adam", "lr": 1.2e-3, "batch-size": 60,
                   "steps": "50000it", "scope": "layer", "rate": "0.2", "layer-rate": ("output=0.1",),
                   "rewind": "0", "augment": "none"}),
    _lth_conv("conv2", 2e-4, 20_000, 0.1),
    _lth_conv("conv4", 3e-4, 25_000, 0.1),
    _lth_conv("conv6", 3e-4, 30_000, 0.15),
    Recipe(name="resnet20-lmc", command="imp",
           description=("ResNet-20 on CIFAR-10 (standard): SGD 0.1, momentum 0.9, weight decay 1e-4, batch 128, "
                        "160 epochs (62,560 it) with 10x drops at 31,280 and 46,920 it, crop-flip; global pruning "
                        f"of 20% per round; late rewinding to iteration 2000 ({_UNCHECKED})."),
           citation=LMC, values={"model": "resnet20", **_SGD_CIFAR, "rewind": "2000it"}),
    Recipe(name="resnet20-lmc-warmup", command="imp",
           description=("ResNet-20 on CIFAR-10 (warmup variant): as resnet20-lmc but lr 0.03 reached by a "
                        f"linear warm-up over 30K iterations and rewinding to theta_0 (lr and warm-up {_UNCHECKED})."),
           citation=LMC, values={"model": "resnet20", **_SGD_CIFAR, "lr": 0.03, "warmup": "30000it", "rewind": "0"}),
    Recipe(name="vgg16-lmc", command="imp",
           description=("VGG-16 on CIFAR-10 (standard): the resnet20-lmc schedule, fc.weight never pruned; "
                        f"late rewinding to iteration 1000 ({_UNCHECKED})."),
           citation=LMC, values={"model": "vgg16", **_SGD_CIFAR, "ignore": ("fc.weight",), "rewind": "1000it"}),
    Recipe(name="vgg16-lmc-warmup", command="imp",
           description=("VGG-16 on CIFAR-10 (warmup variant): as vgg16-lmc but a linear warm-up to lr 0.1 over "
                        f"30K iterations and rewinding to theta_0 (warm-up {_UNCHECKED})."),
           citation=LMC, values={"model": "vgg16", **_SGD_CIFAR, "ignore": ("fc.weight",), "warmup": "30000it",
                                 "rewind": "0"}),
)
RECIPES: Mapping[str, Recipe] = MappingProxyType({recipe.name: recipe for recipe in _RECIPES})


def list_recipes() -> list[Recipe]:
    """Every recipe, in the order ``ticketlab recipes`` lists them."""
    return list(RECIPES.values())


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name is a `TicketlabError` listing the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise TicketlabError(f"Unknown recipe {name!r}; choose one of {', '.join(RECIPES)} "
                             "(see `ticketlab recipes`).") from None


def recipe_defaults(name: str, command: str) -> dict[str, Any]:
    """Recipe ``name``'s values for ``command`` (option name -> value), to serve as the command's
    defaults; a recipe made for another command is refused, naming the command it is for."""
    recipe = get_recipe(name)
    if recipe.command != command:
        raise TicketlabError(f"Recipe {name!r} is for `ticketlab {recipe.command}`, not `ticketlab {command}`; "
                             f"run `ticketlab {recipe.command} --recipe {name}`.")
    return dict(recipe.values)


__all__ = ["LMC", "LTH", "RECIPES", "RECIPE_COMMANDS", "Recipe", "get_recipe", "list_recipes", "recipe_defaults"]
