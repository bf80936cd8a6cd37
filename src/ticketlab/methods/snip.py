"""SNIP (Lee et al. 2019): connection sensitivity at initialisation.

Multiply every prunable weight by a mask ``c`` fixed at 1; the sensitivity of the loss to removing
a weight is ``∂L/∂c = g ⊙ w`` with ``g = ∂L/∂w``, and SNIP keeps the weights with the largest
``|g ⊙ w|``. The gradients of all given batches are summed before taking the absolute value (as
the SynFlow reference code does); the paper's normalisation by Σ|g ⊙ w| does not change any
ranking, so it is left out.

BatchNorm runs in eval mode (running statistics, which are left untouched), as DESIGN.md and the
SynFlow reference code's default ask. This module also holds the helpers the other autograd-based
scorers (GraSP, SynFlow) share: the model's parameters are swapped for detached stand-ins with
`torch.func.functional_call`, so scoring never writes the model's weights, ``.grad`` or
``requires_grad`` flags, and `eval_mode` restores every module's train/eval flag afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..errors import TicketlabError

Batch = tuple[torch.Tensor, torch.Tensor]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode, then restore each module's own flag (mixed modes included)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def check_params(model: nn.Module, params: Mapping[str, torch.Tensor]) -> None:
    """Raise TicketlabError unless every name in ``params`` is a parameter of ``model`` of that shape."""
    if not params:
        raise TicketlabError("No prunable parameters were given to score.")
    own = dict(model.named_parameters())
    for name, tensor in params.items():
        if name not in own:
            raise TicketlabError(f"{name!r} is not a parameter of the model, so it cannot be scored.")
        if tuple(own[name].shape) != tuple(tensor.shape):
            raise TicketlabError(f"{name!r} has shape {tuple(tensor.shape)} but the model's parameter has "
                                 f"shape {tuple(own[name].shape)}.")


def data_batches(context: Any, method: str) -> tuple[Batch, ...]:
    """The context's ``(x, y)`` batches, checked: at least one, labels integer class ids ``(N,)``."""
    batches = tuple(getattr(context, "batches", ()) or ())
    if not batches:
        raise TicketlabError(f"{method} needs at least one (inputs, labels) batch in the scoring context.")
    for i, (x, y) in enumerate(batches):
        if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
            raise TicketlabError(f"The labels of scoring batch {i} must be a 1-D tensor of integer class ids.")
        if len(x) != len(y):
            raise TicketlabError(f"Scoring batch {i} has {len(x)} inputs but {len(y)} labels.")
    return batches


def leaf_weights(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fresh autograd leaves sharing storage with ``params`` (the originals' flags stay untouched)."""
    return {name: p.detach().requires_grad_(True) for name, p in params.items()}


def stand_ins(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every model parameter detached (no autograd work for biases / BN), with ``weights`` swapped in."""
    values = {name: p.detach() for name, p in model.named_parameters()}
    values.update(weights)
    return values


def gradients(output: torch.Tensor, weights: Mapping[str, torch.Tensor], *,
              create_graph: bool = False) -> dict[str, torch.Tensor]:
    """``∂output/∂w`` per weight; a weight the output does not depend on gets zeros (not None)."""
    grads = torch.autograd.grad(output, list(weights.values()), create_graph=create_graph, allow_unused=True)
    return {name: torch.zeros_like(w) if g is None else g for (name, w), g in zip(weights.items(), grads)}


def snip_scores(model: nn.Module, params: Mapping[str, torch.Tensor], context: Any) -> dict[str, torch.Tensor]:
    """``|Σ_b ∂L_b/∂w ⊙ w|`` per prunable weight, ``L_b`` the mean cross-entropy of batch ``b``.

    Args:
        model: maps ``(N, *input_shape)`` to logits ``(N, classes)``; not modified.
        params: name -> prunable weight of ``model`` (any shape).
        context: a `ScoringContext` whose ``batches`` hold at least one ``(x, y)`` pair.

    Returns name -> non-negative scores of the weight's shape, detached.
    """
    check_params(model, params)
    batches = data_batches(context, "SNIP")
    weights = leaf_weights(params)
    values = stand_ins(model, weights)
    total = {name: torch.zeros_like(w) for name, w in weights.items()}
    with torch.enable_grad(), eval_mode(model):
        for x, y in batches:
            loss = F.cross_entropy(functional_call(model, values, (x,)), y)
            for name, g in gradients(loss, weights).items():
                total[name] += g
    return {name: (total[name] * weights[name].detach()).abs() for name in weights}
