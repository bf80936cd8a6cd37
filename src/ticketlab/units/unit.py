"""One unit of work shared by every experiment: train a masked network from a given state, once.

IMP rounds, their controls, pruning-at-init runs and dynamic sparse training all reduce to "start
from these weights with this mask, train with this recipe, store the result". A unit lives in its
own directory::

    weights.safetensors      the trained state dict
    result.json              the record below (its presence means: done, never recomputed)
    checkpoint.safetensors   while training (resumed from if present, deleted at the end)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DataSplits
from ..errors import TicketlabError
from ..files import read_json, read_safetensors, save_safetensors, write_json
from ..masks import Mask
from ..progress import Progress
from ..methods.dynamic import MaskUpdater
from ..runs import RANK_PREFIX, Extension, MetricsLog, RunLock, claim_run_directory
from ..train import TrainConfig, TrainResult, iterations_per_epoch, train
from ..train.checkpoint import CHECKPOINT_NAME, LEGACY_CHECKPOINT_NAME, refuse_legacy_checkpoint

#: Which code path trained a unit, stored in its ``result.json`` as ``trainer``: the one-network
#: loop (`ticketlab.train.train`) or a stacked group (`ticketlab.train.stacked.train_stacked`).
#: Both reach the same weights up to float rounding, not bit for bit: PyTorch's fused Adam/SGD CPU
#: kernels update the last ``numel mod 8`` elements of every tensor in a scalar loop that rounds
#: differently from the vector loop (seen on an AMD EPYC with AVX-512 and AVX2 kernels), and a
#: stacked tensor puts those elements in the vector loop. So whatever must reproduce a unit's bits
#: (regenerating a rewind point, `ticketlab.analysis.copies`) trains it the way it was trained.
SINGLE, STACKED = "single", "stacked"
TRAINERS = (SINGLE, STACKED)

#: progress(description, total_iterations, done_iterations) -> handle with update(n) and close().
ProgressFactory = Progress   # ``progress(description, total, initial)`` -> bar (`ticketlab.progress`)


def save_state(model: nn.Module, path: Path) -> None:
    """Write the whole state dict (CPU copies) atomically as safetensors."""
    save_safetensors(path, {k: v.clone() for k, v in model.state_dict().items()})


def load_state(path: Path, *, root: Path | None = None) -> dict[str, torch.Tensor]:
    """A state dict written by `save_state` (a TicketlabError naming the file if unreadable, or, with
    ``root``, if it resolves outside that directory)."""
    return read_safetensors(path, "weights file", root=root)[0]


def claim_for_process(out: str | Path, config: Mapping[str, Any], *, kind: str,
                      device: torch.device | str = "cpu", extends: Extension | None = None) -> tuple[Path, RunLock]:
    """Claim the run directory this process writes to (see `claim_run_directory`).

    In a single process that is ``out``. Under ``torchrun`` every rank runs the whole experiment
    (DDP keeps their weights and masks identical); rank 0 claims ``out`` first, then every other
    rank K claims ``out/.rank-K`` for its own replica of the files, including its own checkpoints,
    so a resumed multi-process run resumes every rank. If rank 0 refuses ``out`` (another
    configuration lives there, or another process holds it), every rank raises the same error
    instead of hanging. Returns the directory and its lock, held until the run ends.
    """
    from ..train.distributed import init_from_env, is_distributed, rank

    out = Path(out)
    if not is_distributed() or any(part.startswith(RANK_PREFIX) for part in out.parts):
        return claim_run_directory(out, config, kind=kind, extends=extends)
    init_from_env(device)
    import torch.distributed as dist

    message, claimed = [None], None
    if rank() == 0:
        try:
            claimed = claim_run_directory(out, config, kind=kind, extends=extends)
        except TicketlabError as err:
            message = [str(err)]
    dist.broadcast_object_list(message, src=0)
    if message[0] is not None:
        raise TicketlabError(message[0])
    return claimed if rank() == 0 else claim_run_directory(out / f"{RANK_PREFIX}{rank()}", config, kind=kind,
                                                                      extends=extends)


def train_unit(
    unit_dir: Path,
    *,
    model: nn.Module,
    start_state: Mapping[str, torch.Tensor],
    mask: Mask,
    data: DataSplits,
    config: TrainConfig,
    data_seed: int,
    device: torch.device,
    metrics: MetricsLog,
    metrics_key: Mapping[str, Any],
    label: str,
    start_iteration: int = 0,
    capture: dict | None = None,
    mask_updater: MaskUpdater | None = None,
    progress: ProgressFactory | None = None,
    extra: Mapping[str, Any] | None = None,
    on_evaluation: Callable[[int, nn.Module], bool] | None = None,
) -> dict[str, Any]:
    """Train ``model`` (loaded with a *copy* of ``start_state``) under ``mask``; return its record.

    If ``unit_dir/result.json`` exists the stored record is returned without training. With a
    ``mask_updater`` (RigL, SET) the mask changes during training; the record then describes the
    final mask and counts the updates. ``extra`` fields are stored in the record as given.
    ``on_evaluation`` may stop training early (early-bird tickets, see `ticketlab.train.train`);
    the record's ``iterations`` counts the iterations this unit actually trained (its cost).
    """
    finished = finished_record(unit_dir)
    if finished is not None:
        return finished
    model.load_state_dict(start_state)  # copies the values: the start point is never aliased
    total = config.steps.iterations(iterations_per_epoch(data, config.batch_size))
    bar = progress(f"{label} ({100 * mask.density():.1f}% left)", total, start_iteration) if progress else None
    try:
        result = train(
            model, data, config, data_seed=data_seed, mask=mask, start_iteration=start_iteration,
            device=device, checkpoint_path=unit_dir / CHECKPOINT_NAME, metrics=metrics, metrics_key=metrics_key,
            capture=capture, on_step=(lambda i: bar.update(1)) if bar is not None else None,
            mask_updater=mask_updater, on_evaluation=on_evaluation,
        )
    finally:
        if bar is not None:
            bar.close()
    trained = result.final["iteration"] - start_iteration  # the budget's rest, unless on_evaluation stopped it
    return store_result(unit_dir, model, mask, result, metrics_key=metrics_key, iterations=trained,
                        trainer=SINGLE, extra=extra, label=label if mask_updater is not None else None)


def finished_record(unit_dir: Path) -> dict[str, Any] | None:
    """The stored record if ``unit_dir`` is done (its leftover checkpoint deleted), else None.

    A pickle checkpoint of ticketlab 0.1 in an unfinished unit is refused (never unpickled).
    """
    result_path = unit_dir / "result.json"
    if result_path.exists():  # done; a kill may have come before the checkpoint was deleted
        (unit_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
        (unit_dir / LEGACY_CHECKPOINT_NAME).unlink(missing_ok=True)
        return read_result(result_path)
    refuse_legacy_checkpoint(unit_dir)
    return None


def store_result(unit_dir: Path, model: nn.Module, mask: Mask, result: TrainResult, *,
                 metrics_key: Mapping[str, Any], iterations: int, trainer: str,
                 extra: Mapping[str, Any] | None = None, label: str | None = None) -> dict[str, Any]:
    """Write a trained unit's weights and ``result.json`` (which marks it done), then drop its
    checkpoint; return the record. ``trainer`` (`SINGLE` or `STACKED`) says which code path
    trained it (see `TRAINERS`). ``label`` is given for dynamic sparse training, whose final mask
    is stored too."""
    if trainer not in TRAINERS:
        raise ValueError(f"trainer must be one of {TRAINERS}, not {trainer!r}")
    save_state(model, unit_dir / "weights.safetensors")
    best = result.early_stop
    record = {
        **dict(metrics_key),
        "density": mask.density(),
        "layer_densities": mask.layer_densities(), "collapsed_layers": mask.collapsed_layers(),
        "test_accuracy": result.final["test_accuracy"], "val_accuracy": result.final["val_accuracy"],
        "test_loss": result.final["test_loss"], "val_loss": result.final["val_loss"],
        "early_stop_iteration": best["iteration"], "early_stop_val_loss": best["val_loss"],
        "early_stop_test_accuracy": best["test_accuracy"], "iterations": iterations,
        "trainer": trainer, "wall_time": result.wall_time,
        **dict(extra or {}),
    }
    if label is not None:
        record["mask_updates"] = result.mask_updates
        record["mask_changed_fraction"] = result.mask_changed_fraction
        mask.save(unit_dir / "final_mask.safetensors", {"label": label})
    write_json(unit_dir / "result.json", record)
    (unit_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    return record


#: Fields every ``result.json`` holds (those `aggregate` reads).
RESULT_FIELDS = ("density", "layer_densities", "collapsed_layers", "test_accuracy", "val_accuracy",
                 "early_stop_iteration", "early_stop_test_accuracy", "wall_time")


def read_result(path: Path) -> dict[str, Any]:
    """A unit's ``result.json``, checked to hold the fields summaries are built from."""
    record = read_json(path)
    missing = [f for f in RESULT_FIELDS if not isinstance(record, dict) or f not in record]
    if missing:
        raise TicketlabError(f"{str(path)!r} is damaged (it lacks {missing[0]!r}); delete it to retrain this unit.")
    return record

