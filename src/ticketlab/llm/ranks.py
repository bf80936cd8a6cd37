"""One-shot pruning over several processes (``torchrun``): samples split for the statistics, layers
split for the pruning, every rank ending with the same weights.

* Each rank calibrates on its own contiguous slice of the calibration samples; the statistics of a
  block (Gram matrices or input norms, token counts, and the token rows kept for the error report)
  are summed / gathered over the ranks, so every rank holds the statistics of all samples.
* The block's target layers are dealt out to the ranks, keeping layers that read the same input
  together (they share SparseGPT's Hessian factor); each rank prunes its own and then broadcasts the
  new weights, masks and report entries, so every rank applies the same result.
* Each rank then recomputes the block's outputs for its own samples only.

The weights are identical on every rank and equal a single process's up to the order in which the
statistics are summed (float rounding). Backends: gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import TicketlabError
from ..train import distributed as dist_helpers


@dataclass(frozen=True)
class RankGroup:
    """This process's rank among ``world`` processes (``world == 1``: no communication at all)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls, device: torch.device) -> "RankGroup":
        if not dist_helpers.init_from_env(device):
            return cls()
        return cls(rank=dist.get_rank(), world=dist.get_world_size())

    @property
    def active(self) -> bool:
        return self.world > 1

    def samples(self, nsamples: int) -> slice:
        """This rank's contiguous share of ``nsamples`` calibration samples."""
        if nsamples < self.world:
            raise TicketlabError(f"{self.world} processes need at least {self.world} calibration samples, "
                                 f"not {nsamples}; raise --nsamples.")
        bounds = [round(i * nsamples / self.world) for i in range(self.world + 1)]
        return slice(bounds[self.rank], bounds[self.rank + 1])

    def owners(self, groups: list[list[str]]) -> dict[str, int]:
        """Layer name -> the rank that prunes it: groups of layers sharing an input dealt round-robin,
        largest first."""
        if self.world > sum(len(g) for g in groups) and self.active:
            raise TicketlabError(f"{self.world} processes for a block of only {sum(len(g) for g in groups)} target "
                                 "layers: use fewer processes.")
        owner: dict[str, int] = {}
        for index, group in enumerate(sorted(groups, key=len, reverse=True)):
            for name in group:
                owner[name] = index % self.world
        return owner

    def reduce_statistics(self, accumulators: list[Any]) -> None:
        """Sum each distinct accumulator's Gram / norms / tokens over the ranks; gather its token rows."""
        if not self.active:
            return
        for accumulator in accumulators:
            for tensor in (accumulator.gram, accumulator.sq_norms):
                if tensor is not None:
                    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            counts = torch.tensor([accumulator.tokens], dtype=torch.int64, device=self._device(accumulator))
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
            accumulator.tokens = int(counts)
            if accumulator.rows_per_call:
                local = accumulator.samples()
                gathered: list[Any] = [None] * self.world
                dist.all_gather_object(gathered, local.cpu() if local is not None else None)
                accumulator.set_samples([g for g in gathered if g is not None])

    @staticmethod
    def _device(accumulator: Any) -> torch.device:
        for tensor in (accumulator.gram, accumulator.sq_norms):
            if tensor is not None:
                return tensor.device
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

    def share(self, owner: int, weight: torch.Tensor | None, keep: torch.Tensor, entry: dict[str, Any]
              ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Broadcast a pruned layer from its owner: the (reconstructed) weight in place when given, the
        mask and the report entry."""
        if not self.active:
            return keep, entry
        if weight is not None:
            dist.broadcast(weight.data, src=owner)
        flags = keep.to(torch.uint8).contiguous()
        dist.broadcast(flags, src=owner)
        box = [entry]
        dist.broadcast_object_list(box, src=owner)
        return flags.bool(), box[0]


def rank_checksums(model: Any) -> list[str] | None:
    """Under torchrun, every rank's SHA-256 of all its weights (they must be identical), else None."""
    import hashlib

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, digest.hexdigest())
    return gathered


__all__ = ["RankGroup", "rank_checksums"]
