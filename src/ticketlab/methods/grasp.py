"""GraSP (Wang et al. 2020): preserve the gradient flow at initialisation.

With ``g = ∇_θ L`` and ``H = ∇²_θ L`` (θ = the prunable weights, logits divided by a temperature
T = 200 before the cross-entropy), removing weight ``q`` changes the gradient norm ``gᵀg`` to first
order by ``-2 θ_q (Hg)_q``. The paper's score is ``S(θ) = -θ ⊙ Hg`` and the weights with the
*largest* S are removed: their removal reduces the gradient flow least (or increases it).

Sign convention here (the opposite of the paper's, on purpose): every scorer in ticketlab returns
"higher = more worth keeping", so `grasp_scores` returns ``θ ⊙ Hg = -S``. Keeping its top-k is
exactly removing the largest ``S``. Note this is *not* a magnitude criterion: a weight with a large
negative ``θ ⊙ Hg`` is removed first.

``Hg`` is computed by double backprop without forming H, ``Hg = ∇_θ (stop_grad(g) · ∇_θ L)``,
summed over the batches like the reference code:
``g = Σ_b ∇L_b``, then ``Hg = Σ_b ∇(g · ∇L_b) = (Σ_b H_b) g``. BatchNorm runs in eval mode as for
SNIP (the SynFlow reference code's default), so the running statistics are never updated. The
paper's normalisation by ``|Σ θ ⊙ Hg|`` is a positive constant and does not change any ranking.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .snip import check_params, data_batches, eval_mode, gradients, leaf_weights, stand_ins


def grasp_scores(model: nn.Module, params: Mapping[str, torch.Tensor], context: Any) -> dict[str, torch.Tensor]:
    """Keep-scores ``θ ⊙ Hg`` (= minus the paper's GraSP score) per prunable weight.

    Args:
        model: maps ``(N, *input_shape)`` to logits ``(N, classes)``; not modified.
        params: name -> prunable weight of ``model``.
        context: a `ScoringContext` with at least one ``(x, y)`` batch and ``grasp_temperature``.

    Returns name -> signed scores of the weight's shape (higher = keep), detached.
    """
    check_params(model, params)
    batches = data_batches(context, "GraSP")
    temperature = float(getattr(context, "grasp_temperature", 200.0))
    weights = leaf_weights(params)
    values = stand_ins(model, weights)

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, values, (x,)) / temperature, y)

    with torch.enable_grad(), eval_mode(model):
        g = {name: torch.zeros_like(w) for name, w in weights.items()}  # stop_grad(g): plain tensors
        for x, y in batches:
            for name, grad in gradients(loss(x, y), weights).items():
                g[name] += grad
        hg = {name: torch.zeros_like(w) for name, w in weights.items()}
        for x, y in batches:
            grads = gradients(loss(x, y), weights, create_graph=True)
            inner = sum((g[name] * grads[name]).sum() for name in weights)
            if not isinstance(inner, torch.Tensor) or not inner.requires_grad:
                continue  # the gradient does not depend on θ (e.g. every path cut): Hg contributes 0
            for name, part in gradients(inner, weights).items():
                hg[name] += part
    return {name: weights[name].detach() * hg[name].detach() for name in weights}
