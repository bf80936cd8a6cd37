"""Named recipes: their flags exist on their command, their models and data are registered, their
layer patterns name the layers the paper names, and two recipes hold the papers' values."""

import math

import pytest
from click.testing import CliRunner
from torch import nn

from ticketlab.cli import cli
from ticketlab.cli.common import recipe_values
from ticketlab.cli.recipes import recipes
from ticketlab.experiments.sparse import PruneInitConfig, SparseTrainConfig
from ticketlab.lottery import IMPConfig

CONFIGS = {"imp": IMPConfig, "prune-init": PruneInitConfig, "sparse-train": SparseTrainConfig}
from ticketlab.data import list_datasets
from ticketlab.data.augment import AUGMENTATIONS
from ticketlab.errors import TicketlabError
from ticketlab.models import create_model, list_models
from ticketlab.recipes import LMC, LTH, Recipe, get_recipe, list_recipes, recipe_defaults
from ticketlab.targets import prunable_parameters, resolve_patterns

SHAPES = {"cifar10": (3, 32, 32), "mnist": (1, 28, 28)}
#: OpenLTH's CIFAR-10 epoch: 50,000 training images in batches of 128, the last one partial.
STEPS_PER_EPOCH = math.ceil(50_000 / 128)
NAMES = [recipe.name for recipe in list_recipes()]


def _argv(values):
    argv = []
    for key, value in values.items():
        for item in value if isinstance(value, tuple) else (value,):
            argv += [f"--{key}"] if item is True else [f"--{key}", str(item)]
    return argv


@pytest.mark.parametrize("name", NAMES)
def test_every_value_is_a_flag_its_command_parses(name):
    recipe = get_recipe(name)
    command = cli.commands[recipe.command]
    options = {opt[2:] for param in command.params for opt in param.opts if opt.startswith("--")}
    assert set(recipe.values) <= options, sorted(set(recipe.values) - options)
    context = command.make_context(recipe.command, _argv(recipe.values))   # click converts every value
    values = recipe_values(name, recipe.command, CONFIGS[recipe.command])   # what --recipe applies
    assert set(values) <= set(context.params)
    for param in command.params:
        if param.name in values and not param.multiple:
            assert context.params[param.name] == param.type_cast_value(context, values[param.name])


@pytest.mark.parametrize("name", NAMES)
def test_models_data_and_augmentation_are_registered_and_patterns_resolve(name):
    values = get_recipe(name).values
    assert values["model"] in {m.name for m in list_models()}
    assert values["data"] in {d.name for d in list_datasets()}
    assert values["augment"] in AUGMENTATIONS
    model = create_model(values["model"], SHAPES[values["data"]], 10, seed=0)
    names = list(prunable_parameters(model, ignore=values.get("ignore", ())))
    patterns = [item.rpartition("=")[0] for item in values.get("layer-rate", ())]
    resolve_patterns(patterns, names, model)   # raises when a pattern names no layer


@pytest.mark.parametrize("model", ["conv2", "conv4", "conv6"])
def test_conv_recipes_give_the_conv_rate_to_exactly_the_conv_layers(model):
    net = create_model(model, SHAPES["cifar10"], 10, seed=0)
    names = list(prunable_parameters(net))
    rates = get_recipe(f"{model}-lth").values["layer-rate"]
    (conv_pattern, _), (output, rate) = (item.rpartition("=")[::2] for item in rates)
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    assert resolve_patterns([conv_pattern], names, net)[conv_pattern] == [f"{n}.weight" for n in convs]
    assert resolve_patterns([output], names, net)[output] == ["classifier.5.weight"] and rate == "0.1"


def test_golden_conv6_and_resnet20_recipes():
    conv6 = get_recipe("conv6-lth")
    assert conv6.command == "imp" and conv6.citation == LTH
    assert dict(conv6.values) == {
        "model": "conv6", "data": "cifar10", "optimizer": "adam", "lr": 3e-4, "batch-size": 60, "steps": "30000it",
        "scope": "layer", "rate": "0.2", "layer-rate": (r"features\..*=0.15", "output=0.1"), "rewind": "0",
        "augment": "none"}
    resnet = get_recipe("resnet20-lmc")
    assert resnet.citation == LMC
    assert dict(resnet.values) == {
        "model": "resnet20", "data": "cifar10", "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight-decay": 1e-4,
        "batch-size": 128, "steps": f"{160 * STEPS_PER_EPOCH}it",   # OpenLTH: 160 epochs, drops at 80 and 120
        "lr-drops": f"{80 * STEPS_PER_EPOCH}it,{120 * STEPS_PER_EPOCH}it", "lr-gamma": 0.1, "scope": "global",
        "rate": "0.2", "augment": "crop-flip", "rewind": "2000it"}


def test_unknown_recipe_and_wrong_command_are_one_sentence():
    with pytest.raises(TicketlabError, match=r"Unknown recipe 'lenet'; choose one of lenet300-lth, conv2-lth"):
        get_recipe("lenet")
    with pytest.raises(TicketlabError, match=r"is for `ticketlab imp`, not `ticketlab prune-init`"):
        recipe_defaults("conv2-lth", "prune-init")
    with pytest.raises(TicketlabError, match="not an option name"):
        Recipe("mine", "imp", "d", "c", {"--lr": 0.1})
    values = recipe_defaults("lenet300-lth", "imp")
    values["lr"] = 1.0                                    # a copy: the registry stays as it was
    assert get_recipe("lenet300-lth").values["lr"] == 1.2e-3


def test_recipes_command_lists_every_recipe():
    result = CliRunner().invoke(recipes, ["--flags"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for recipe in list_recipes():
        at = lines.index(f"{recipe.name:20s}  ticketlab {recipe.command}")
        assert lines[at + 1: at + 3] == [f"    {recipe.description}", f"    {recipe.citation}"]
    assert "--model conv6 --data cifar10 --optimizer adam --lr 0.0003 --batch-size 60" in result.output
    assert "--layer-rate features\\..*=0.15 --layer-rate output=0.1" in result.output
