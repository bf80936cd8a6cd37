"""Training checkpoints: everything `train` needs to continue exactly where it stopped.

A checkpoint is one safetensors file (`ticketlab.files.save_tree`): the model and optimizer
state, the global RNG state, the iteration, the evaluations so far and, for dynamic sparse
training, the current and initial masks and the updater's state. Loading it cannot run code, and
every way it can fail to fit (another model, another optimizer, missing entries, a damaged file)
is one `TicketlabError` sentence that names the file.

Checkpoints of ticketlab 0.1 were pickles (``checkpoint.pt``); they are never loaded, because
unpickling a planted file runs its code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import TicketlabError
from ..files import load_tree, save_tree
from ..masks import Mask

if TYPE_CHECKING:
    from ..methods.dynamic import MaskUpdater

CHECKPOINT_NAME = "checkpoint.safetensors"
LEGACY_CHECKPOINT_NAME = "checkpoint.pt"
_REQUIRED = ("model", "optimizer", "torch_rng", "iteration", "evals", "elapsed")


@dataclass
class Progress:
    """Where training stands: iterations done, evaluations so far, seconds spent, mask updates."""

    iteration: int
    evals: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0
    mask_updates: int = 0


def refuse_legacy_checkpoint(directory: Path) -> None:
    """A pickle checkpoint of ticketlab 0.1 in ``directory`` is refused (unpickling can run code)."""
    legacy = Path(directory) / LEGACY_CHECKPOINT_NAME
    if legacy.exists():
        raise TicketlabError(
            f"{str(legacy)!r} is a pickle checkpoint, which ticketlab never loads because unpickling can run "
            "code; delete it to retrain this unit from its start."
        )


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, progress: Progress,
                    dst: dict[str, Any] | None = None) -> None:
    """Write the checkpoint atomically (``dst``: masks and updater state of RigL / SET)."""
    save_checkpoint_state(path, model.state_dict(), optimizer.state_dict(), progress, dst)


def save_checkpoint_state(path: Path, model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any],
                          progress: Progress, dst: dict[str, Any] | None = None) -> None:
    """`save_checkpoint` from the state dicts themselves: a stacked run writes one network's slices
    (`ticketlab.train.stacked`), in the very format a single run reads back, and vice versa."""
    state: dict[str, Any] = {
        "model": model_state, "optimizer": optimizer_state, "torch_rng": torch.get_rng_state(),
        "iteration": progress.iteration, "evals": progress.evals, "elapsed": progress.elapsed,
    }
    if dst is not None:
        state["dst"] = dst
    save_tree(path, state)


@dataclass
class CheckpointState:
    """A checkpoint read and checked: state dicts, RNG state, where training stands (DST state aside)."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    torch_rng: torch.Tensor
    progress: Progress
    dst: Any = None


def read_checkpoint(path: Path, *, total: int) -> CheckpointState:
    """The checkpoint at ``path`` with its required entries and progress checked (a TicketlabError
    naming the file otherwise); nothing is loaded into a model yet."""
    state = load_tree(path)
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise _fail(path, f"lacks {', '.join(repr(k) for k in missing)}")
    if not isinstance(state["model"], dict) or not isinstance(state["optimizer"], dict):
        raise _fail(path, "holds a malformed model or optimizer state")
    return CheckpointState(model=state["model"], optimizer=state["optimizer"], torch_rng=state["torch_rng"],
                           progress=_progress_of(path, state, total), dst=state.get("dst"))


def _fail(path: Path, what: str) -> TicketlabError:
    return TicketlabError(f"Checkpoint {str(path)!r} {what}; delete it to retrain this unit from its start.")


def restore_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, total: int,
                       mask: Mask | None = None, initial_mask: dict[str, torch.Tensor] | None = None,
                       mask_updater: "MaskUpdater | None" = None) -> Progress:
    """Load ``path`` into ``model``, ``optimizer``, the global RNG and (DST) the masks and updater."""
    state = read_checkpoint(path, total=total)
    try:
        model.load_state_dict(state.model)
    except (RuntimeError, TypeError, AttributeError):
        raise _fail(path, "was written for another model") from None
    try:
        optimizer.load_state_dict(state.optimizer)
        torch.set_rng_state(state.torch_rng)
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError):
        raise _fail(path, "holds an optimizer or RNG state that does not fit this run") from None
    progress = state.progress
    if (state.dst is not None) != (mask_updater is not None):
        raise _fail(path, "was written " + ("with" if state.dst is not None else "without") + " a mask updater")
    if mask_updater is not None:
        progress.mask_updates = _restore_dst(path, state.dst, mask, initial_mask, mask_updater)
    return progress


def _progress_of(path: Path, state: dict[str, Any], total: int) -> Progress:
    iteration, evals, elapsed = state["iteration"], state["evals"], state["elapsed"]
    if isinstance(iteration, bool) or not isinstance(iteration, int) or not 0 <= iteration < total:
        raise _fail(path, f"stops at iteration {iteration!r}, outside this {total}-iteration budget")
    if not isinstance(evals, list) or not evals or not all(isinstance(e, dict) and "val_loss" in e for e in evals):
        raise _fail(path, "holds malformed evaluation records")
    if not isinstance(elapsed, (int, float)):
        raise _fail(path, "holds a malformed elapsed time")
    return Progress(iteration=iteration, evals=evals, elapsed=float(elapsed))


def _restore_dst(path: Path, dst: Any, mask: Mask | None, initial_mask: dict[str, torch.Tensor] | None,
                 mask_updater: "MaskUpdater") -> int:
    """Copy the checkpoint's masks into ``mask`` / ``initial_mask`` (in place); return the update count."""
    if not isinstance(dst, dict) or not {"mask", "initial_mask", "mask_updates", "updater"} <= set(dst):
        raise _fail(path, "holds a malformed mask-updater state")
    try:
        mask_updater.load_state_dict(dst["updater"])
    except TicketlabError:
        raise
    except (KeyError, RuntimeError, TypeError, ValueError):
        raise _fail(path, "holds a malformed mask-updater state") from None
    assert mask is not None and initial_mask is not None
    for name, tensor in mask.items():
        for source, target in ((dst["mask"], tensor), (dst["initial_mask"], initial_mask[name])):
            value = source.get(name) if isinstance(source, dict) else None
            if not isinstance(value, torch.Tensor) or value.shape != tensor.shape:
                raise _fail(path, f"holds no mask for {name!r} of shape {tuple(tensor.shape)}")
            target.copy_(value.to(torch.bool))
    count = dst["mask_updates"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise _fail(path, "holds a malformed mask-update count")
    return count
