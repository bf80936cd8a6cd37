"""SynFlow (Tanaka et al. 2020): iterative synaptic flow pruning, data-free.

One scoring pass "linearises" the network — every parameter (weights *and* biases) and every
floating-point buffer (BatchNorm running mean/var) replaced by its absolute value, as the reference
code does to the whole state dict — feeds a single all-ones input of the model's input shape and
takes ``R = Σ outputs``. With non-negative parameters and input every activation is non-negative,
so ReLUs pass everything and ``R`` is the sum over all input-output paths of the product of the
absolute weights on the path (the "path norm"). The score is ``|∂R/∂θ ⊙ θ|``: the total flow
through each weight. Because it uses no data, the mask does not depend on any batch.

BatchNorm: the model runs in eval mode, so BN is the affine map ``(x - |μ|)/√(σ² + ε)·|γ| + |β|``
with its running statistics (identity-like at init); the reference code does the same (eval mode,
abs of the state dict). Nothing is written into the model: the absolute values are fresh tensors
handed to `torch.func.functional_call`, so the original weights, signs and buffers stay
bit-for-bit intact ("restore signs afterwards" holds by construction).

Scores are products of many absolute weights, so a deep net (resnet20, vgg16) can overflow
float32; ``context.synflow_double`` runs the pass in float64. Non-finite scores raise a
`TicketlabError` that says so, instead of silently ranking infinities.

This module scores once, given the current mask; the iterative schedule (100 rounds, density at
round k = ρ^(k/K), each round selecting within the previous mask) is in `ticketlab.methods.pai`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..errors import TicketlabError
from .snip import check_params, eval_mode, gradients


def synflow_input_shape(model: nn.Module, context: Any) -> tuple[int, ...]:
    """One example's shape: ``context.input_shape``, else the first batch's, else ``model.input_shape``."""
    shape = getattr(context, "input_shape", None)
    if shape is None:
        batches = getattr(context, "batches", ()) or ()
        if batches:
            shape = tuple(batches[0][0].shape[1:])
    if shape is None:
        shape = getattr(model, "input_shape", None)
    if shape is None:
        raise TicketlabError("SynFlow needs the model's input shape: set input_shape in the scoring context.")
    return tuple(int(d) for d in shape)


def synflow_scores(model: nn.Module, params: Mapping[str, torch.Tensor], context: Any,
                   mask: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``|∂R/∂θ ⊙ θ|`` of the linearised (absolute-valued), masked network on an all-ones input.

    Args:
        model: maps ``(N, *input_shape)`` to outputs; not modified (weights, buffers, flags, mode).
        params: name -> prunable weight of ``model``.
        context: a `ScoringContext` (``input_shape``, ``synflow_double``); its batches are not used.
        mask: optional name -> bool tensor; pruned weights are zero in the forward pass and score 0.

    Returns name -> non-negative scores of each weight's shape (float64 when ``synflow_double``).
    """
    check_params(model, params)
    shape = synflow_input_shape(model, context)
    double = bool(getattr(context, "synflow_double", False))
    own = dict(model.named_parameters())
    first = next(iter(own.values()))
    dtype = torch.float64 if double else (first.dtype if first.is_floating_point() else torch.float32)

    def linear(t: torch.Tensor) -> torch.Tensor:
        """A new tensor |t| (in float64 when asked); never a view of the model's storage."""
        out = t.detach().abs()
        return out.to(torch.float64) if double else out

    values: dict[str, torch.Tensor] = {}
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point():
            values[name] = linear(buffer)
    for name, p in own.items():
        values[name] = linear(params[name] if name in params else p)
    weights: dict[str, torch.Tensor] = {}
    for name in params:
        w = values[name]
        if mask is not None:
            w = w * mask[name].to(device=w.device, dtype=w.dtype)
        weights[name] = values[name] = w.requires_grad_(True)

    with torch.enable_grad(), eval_mode(model):
        ones = torch.ones((1, *shape), dtype=dtype, device=first.device)
        flow = functional_call(model, values, (ones,)).sum()
        grads = gradients(flow, weights)

    scores = {}
    for name, w in weights.items():
        score = (grads[name] * w.detach()).abs()
        if mask is not None:  # inf * 0 would be NaN: a pruned weight simply has no flow
            score = score.masked_fill(~mask[name].to(device=score.device, dtype=torch.bool), 0.0)
        if not bool(torch.isfinite(score).all()):
            advice = ("even in double precision" if double else
                      f"in {dtype}; score in double precision (ScoringContext(synflow_double=True), "
                      "--synflow-double)")
            raise TicketlabError(f"SynFlow's scores for {name!r} overflowed {advice}.")
        scores[name] = score
    return scores
