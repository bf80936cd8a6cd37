"""`Mask`: the first-class sparsity pattern of a model.

A mask maps parameter names to boolean tensors of the same shape (True = weight kept). It knows its
densities, checks itself against a model, saves to and loads from safetensors, and is applied to a
model through one mechanism, `BoundMask` (`Mask.apply_` and the trainer both use it), which zeroes
the pruned entries in place. Keeping the pruned weights physically zero (rather than multiplying in
every forward pass) costs nothing at inference and makes a saved state dict exactly sparse; the
trainer keeps them zero during training (see `ticketlab.train.loop`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from .errors import TicketlabError
from .files import read_safetensors, save_safetensors


class Mask(Mapping[str, torch.Tensor]):
    """Parameter name -> bool tensor (True = kept).

    Operations (``&``, `shuffled`, selection) return new masks. The one exception is dynamic
    sparse training: a RigL / SET updater rewrites the tensors of the mask given to `train` in
    place, so that mask describes the final network when training returns (copy it first to
    keep the initial one).
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self._tensors: dict[str, torch.Tensor] = {}
        for name, tensor in tensors.items():
            if not isinstance(tensor, torch.Tensor):
                raise TicketlabError(f"Mask entry {name!r} is not a tensor.")
            self._tensors[name] = tensor.detach().to(device="cpu", dtype=torch.bool).contiguous()

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def ones_like(cls, params: Mapping[str, torch.Tensor]) -> "Mask":
        """A dense mask (everything kept) with the shapes of ``params``."""
        return cls({n: torch.ones(p.shape, dtype=torch.bool) for n, p in params.items()})

    # --- mapping protocol ---------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask) or list(self) != list(other):
            return False
        return all(torch.equal(self[n], other[n]) for n in self)

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, density={self.density():.4f})"

    # --- densities ----------------------------------------------------------------------------
    def num_kept(self) -> int:
        return int(sum(int(t.sum()) for t in self._tensors.values()))

    def num_total(self) -> int:
        return int(sum(t.numel() for t in self._tensors.values()))

    def density(self) -> float:
        """Fraction of masked weights kept, over all layers."""
        total = self.num_total()
        return self.num_kept() / total if total else 1.0

    def layer_densities(self) -> dict[str, float]:
        return {n: float(t.sum()) / t.numel() if t.numel() else 1.0 for n, t in self._tensors.items()}

    def collapsed_layers(self) -> list[str]:
        """Layers with no weight left ("layer collapse": the network cannot pass signal)."""
        return [n for n, t in self._tensors.items() if not bool(t.any())]

    # --- algebra ------------------------------------------------------------------------------
    def __and__(self, other: "Mask") -> "Mask":
        self._check_same_layout(other)
        return Mask({n: self[n] & other[n] for n in self})

    def differing(self, other: "Mask") -> int:
        """The Hamming distance: how many positions the two masks (of one layout) disagree on."""
        self._check_same_layout(other)
        return sum(int((self[n] != other[n]).sum()) for n in self)

    def is_subset_of(self, other: "Mask") -> bool:
        """True when every weight kept here is also kept in ``other`` (masks only shrink)."""
        self._check_same_layout(other)
        return all(not bool((self[n] & ~other[n]).any()) for n in self)

    def shuffled(self, generator: torch.Generator) -> "Mask":
        """The same number of kept weights per layer, at random positions within each layer."""
        out = {}
        for n, t in self._tensors.items():
            perm = torch.randperm(t.numel(), generator=generator)
            out[n] = t.flatten()[perm].view_as(t)
        return Mask(out)

    def _check_same_layout(self, other: "Mask") -> None:
        if set(self) != set(other) or any(self[n].shape != other[n].shape for n in self):
            raise TicketlabError("The two masks cover different parameters or shapes.")

    # --- models -------------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> None:
        """Raise TicketlabError unless every entry names a parameter of ``model`` with the same shape."""
        params = dict(model.named_parameters())
        for name, tensor in self._tensors.items():
            if name not in params:
                raise TicketlabError(f"The mask names parameter {name!r}, which the model does not have.")
            if tuple(params[name].shape) != tuple(tensor.shape):
                raise TicketlabError(
                    f"The mask for {name!r} has shape {tuple(tensor.shape)} but the model's parameter "
                    f"has shape {tuple(params[name].shape)}."
                )

    def bind(self, model: nn.Module) -> "BoundMask":
        """Attach this mask to ``model``'s parameters (validated) for repeated, cheap enforcement."""
        self.validate(model)
        return BoundMask(self, model)

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> None:
        """Zero the pruned weights of ``model`` in place, exactly ``+0.0`` as `BoundMask.zero_weights_` does.

        One parameter at a time, so the extra memory is one parameter's mask in its dtype, not the
        whole mask's (pruning a model block by block, `ticketlab.llm`, holds little more than a block).
        For repeated enforcement (every training step) `bind` once and call `zero_weights_`.
        """
        self.validate(model)
        params = dict(model.named_parameters())
        for name, keep in self._tensors.items():
            param = params[name]
            param.mul_(keep.to(device=param.device, dtype=param.dtype)).add_(0.0)

    # --- files --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, metadata: Mapping[str, object] | None = None) -> None:
        """Write the mask as a safetensors file of bool tensors, atomically and deterministically
        (identical masks and metadata give identical bytes)."""
        meta = {"format": "ticketlab-mask", "density": round(self.density(), 8), **dict(metadata or {})}
        save_safetensors(path, self._tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> "Mask":
        """Read a mask written by `save`; a missing, unreadable or malformed file (or, with ``root``,
        one that resolves outside that directory) is a TicketlabError."""
        tensors, _ = read_safetensors(path, "mask file", root=root)
        bad = [n for n, t in tensors.items() if t.dtype != torch.bool]
        if bad:
            raise TicketlabError(f"Mask file {str(path)!r} holds non-boolean tensors (e.g. {bad[0]!r}).")
        empty = [n for n, t in tensors.items() if t.numel() == 0]
        if empty:
            raise TicketlabError(f"Mask file {str(path)!r} holds an empty tensor ({empty[0]!r}), which masks nothing.")
        return cls(tensors)


def mask_fingerprint(mask: Mask) -> torch.Tensor:
    """Per layer (kept count, Σ (flat index + 1) of kept weights) as int64, shape ``(2 · layers,)``:
    a cheap summary to check that all ranks hold the same mask."""
    out = []
    for tensor in mask.values():
        flat = tensor.flatten()
        out.append(flat.sum(dtype=torch.int64))
        out.append((torch.nonzero(flat).flatten() + 1).sum(dtype=torch.int64))
    return torch.stack(out) if out else torch.zeros(0, dtype=torch.int64)


class BoundMask:
    """A mask tied to one model's parameters: the single mechanism that writes a mask into tensors.

    The mask is cached once as float tensors on the parameters' device, so that each enforcement is
    one fused ``torch._foreach_mul_`` over all layers (the trainer calls it every step).
    """

    def __init__(self, mask: Mask, model: nn.Module):
        params = dict(model.named_parameters())
        self.mask = mask
        self.params: list[nn.Parameter] = [params[n] for n in mask]
        self.factors: list[torch.Tensor] = [
            mask[n].to(device=p.device, dtype=p.dtype) for n, p in zip(mask, self.params)
        ]

    @torch.no_grad()
    def refresh(self) -> None:
        """Re-read the mask's bool tensors after they were changed in place (RigL, SET).

        Dynamic sparse training moves kept weights between update steps while the per-layer
        counts stay fixed; the cached float factors are overwritten in place (not replaced), so
        the lists handed to the fused ``_foreach`` kernels stay valid and nothing is reallocated.
        """
        for name, factor in zip(self.mask, self.factors):
            factor.copy_(self.mask[name])

    @torch.no_grad()
    def zero_weights_(self) -> None:
        """Set every pruned weight to exactly ``+0.0``.

        Multiplying a negative weight by 0 gives ``-0.0``; adding ``0.0`` turns it into ``+0.0`` and
        leaves every other value bit for bit as it was. Numerically nothing changes, but a state
        dict with one kind of zero is smaller once exported (``ticketlab.deploy``).
        """
        torch._foreach_mul_(self.params, self.factors)
        torch._foreach_add_(self.params, 0.0)

    @torch.no_grad()
    def zero_grads_(self) -> None:
        """Zero the gradients of pruned weights, so momentum and Adam moments never see them."""
        pairs = [(p.grad, f) for p, f in zip(self.params, self.factors) if p.grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [f for _, f in pairs])

    @torch.no_grad()
    def zero_optimizer_state_(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero every per-weight optimiser buffer (momentum, exp_avg, exp_avg_sq, ...) of pruned weights."""
        for param, factor in zip(self.params, self.factors):
            for value in optimizer.state.get(param, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    value.mul_(factor)
