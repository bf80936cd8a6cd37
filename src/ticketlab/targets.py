"""Which parameters are prunable.

By default the ``weight`` of every ``nn.Linear`` and ``nn.ConvNd`` module: biases and normalisation
layers are never pruned (matching names like ``*.weight`` would wrongly catch BatchNorm scales, a
bug seen in peer code). Patterns select or drop parameters by exact name, suffix or regular
expression, and a pattern that matches nothing is an error rather than a silent no-op.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from torch import nn

from .errors import TicketlabError

PRUNABLE_MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: The name users can give (in --ignore or --layer-rate) to mean the network's output layer.
OUTPUT_ALIAS = "output"


def is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's GPT-2 ``Conv1D``: ``y = x W + b`` with ``W`` stored transposed, as
    (in_features, out_features); every method working on input columns must transpose it."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def output_layer_name(model: nn.Module) -> str:
    """Parameter name of the classifier: the weight of the last ``nn.Linear`` in module order."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise TicketlabError("The model has no nn.Linear layer, so it has no output layer to name.")
    return f"{last}.weight" if last else "weight"


def _matches(pattern: str, name: str) -> bool:
    """Exact name, dotted suffix (``fc3.weight`` matches ``net.fc3.weight``) or full regex match."""
    if pattern == name or name.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def resolve_patterns(patterns: Iterable[str], names: Sequence[str], model: nn.Module | None = None,
                     *, what: str = "pattern") -> dict[str, list[str]]:
    """Map each pattern to the names it matches; ``output`` stands for the output layer.

    Raises TicketlabError for a pattern that matches no name, listing what could match.
    """
    resolved: dict[str, list[str]] = {}
    for pattern in patterns:
        if pattern == OUTPUT_ALIAS and model is not None:
            hits = [n for n in names if n == output_layer_name(model)]
        else:
            hits = [n for n in names if _matches(pattern, n)]
        if not hits:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise TicketlabError(f"The {what} {pattern!r} matches no prunable parameter (they are: {shown}).")
        resolved[pattern] = hits
    return resolved


def prunable_parameters(model: nn.Module, *, ignore: Sequence[str] = ()) -> dict[str, nn.Parameter]:
    """Name -> parameter for every prunable weight, in module order, minus those matching ``ignore``."""
    params: dict[str, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_MODULE_TYPES):
            name = f"{module_name}.weight" if module_name else "weight"
            params[name] = module.weight
    if not params:
        raise TicketlabError("The model has no Linear or Conv weights to prune.")
    ignored = {n for hits in resolve_patterns(ignore, list(params), model, what="ignore pattern").values()
               for n in hits}
    kept = {n: p for n, p in params.items() if n not in ignored}
    if not kept:
        raise TicketlabError("Every prunable parameter is ignored, so there is nothing left to prune.")
    return kept
