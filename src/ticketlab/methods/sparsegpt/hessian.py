"""The inverse-Hessian factor SparseGPT's updates use: ``U`` upper with ``Uᵀ U = (H + λI)⁻¹``.

``H`` (cols, cols) is ``Σ x xᵀ`` of a layer's calibration inputs; computed once per distinct
input and shared by the layers that read it (q/k/v, gate/up). See `ticketlab.methods.sparsegpt`.
"""

from __future__ import annotations

import torch

from ...errors import TicketlabError

#: How many times a failed Cholesky factorisation is retried, each with 10x more damping.
_DAMPING_RETRIES = 4


def lower_triangular_inverse(L: torch.Tensor, leaf: int = 256) -> torch.Tensor:
    """``L⁻¹`` for a lower-triangular ``L`` (n, n), by recursive halving.

    ``[[A, 0], [C, D]]⁻¹ = [[A⁻¹, 0], [-D⁻¹ C A⁻¹, D⁻¹]]``: about n³/3 multiply-adds, almost all of
    them in two large matrix products per level, against n³/2 in a triangular solve with an
    identity right-hand side (torch exposes no trtri). Twice as fast on 2048x2048 on CPU, with
    the same accuracy (relative error ~1e-7 in fp32 against fp64).
    """
    n = L.shape[0]
    if n <= leaf:
        return torch.linalg.solve_triangular(L, torch.eye(n, dtype=L.dtype, device=L.device), upper=False)
    h = n // 2
    Ai = lower_triangular_inverse(L[:h, :h], leaf)
    Di = lower_triangular_inverse(L[h:, h:], leaf)
    out = torch.zeros_like(L)
    out[:h, :h] = Ai
    out[h:, h:] = Di
    out[h:, :h] = -(Di @ (L[h:, :h] @ Ai))
    return out


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float = 0.01, *, name: str = "the layer") -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + λI)⁻¹`` with ``λ = percdamp · mean(diag H)``.

    ``hessian`` (cols, cols) must already have its dead diagonal entries set to 1. If a Cholesky
    factorisation fails (H numerically singular), λ is multiplied by 10 and the whole factorisation
    retried, up to `_DAMPING_RETRIES` times; then a `TicketlabError` names the layer.
    """
    H = hessian.to(torch.float32)
    if not bool(torch.isfinite(H).all()):
        raise TicketlabError(f"The calibration Hessian of {name} contains NaN or infinite values (the activations overflowed).")
    mean_diag = float(torch.diagonal(H).mean())
    damp = percdamp * mean_diag
    # Reversal trick: with J the order-reversing permutation and J H J = L Lᵀ (one Cholesky),
    # H⁻¹ = J L⁻ᵀ L⁻¹ J, so U = J L⁻¹ J is upper triangular with Uᵀ U = H⁻¹ — exactly the factor
    # the reference obtains with cholesky -> cholesky_inverse -> cholesky(upper), for one
    # Cholesky and one triangular inverse instead of two Choleskys and a full inverse.
    Hrev = H.flip(0, 1)            # a copy; the damping is added to its diagonal in place
    applied = 0.0
    for _ in range(_DAMPING_RETRIES + 1):
        Hrev.diagonal().add_(damp - applied)
        applied = damp
        L, info = torch.linalg.cholesky_ex(Hrev)
        if int(info) == 0:
            del Hrev
            inverse = lower_triangular_inverse(L)
            L = None                 # at most three (n, n) matrices alive: H, L⁻¹ and U
            U = inverse.flip(0, 1)
            inverse = None
            if bool(torch.isfinite(U).all()) and bool((torch.diagonal(U) > 0).all()):
                return U
            Hrev = H.flip(0, 1)
            applied = 0.0
        L = None
        damp = damp * 10.0 if damp > 0 else 0.01 * mean_diag
    raise TicketlabError(
        f"The Hessian of {name} stays singular even with dampening {damp / 10.0 / max(mean_diag, 1e-30):.3g} x mean(diag H); "
        f"use more or more varied calibration data or a larger percdamp."
    )


def hessian_factor(hessian: torch.Tensor, percdamp: float = 0.01, *, name: str = "the layer") -> torch.Tensor:
    """``U`` for a raw ``Σ x xᵀ``: dead inputs (``H_jj = 0``) get ``H_jj = 1``, then `inverse_hessian_factor`."""
    H = hessian.detach().to(torch.float32)
    dead_idx = (torch.diagonal(H) == 0).nonzero().squeeze(1)
    if dead_idx.numel():
        H = H.clone()             # never modify the caller's statistics
        H[dead_idx, dead_idx] = 1.0
    return inverse_hessian_factor(H, percdamp, name=name)


__all__ = ["hessian_factor", "inverse_hessian_factor", "lower_triangular_inverse"]
