"""`export`: a run's ticket or a pruned Hugging Face model -> a directory that rebuilds it, smaller.

For a vision ticket the network is first compacted (`compact_model`: dead units removed, constants
folded) when that removes anything, then every tensor is stored in the compact encoding. The
compacted network's outputs are checked against the masked network's on a seeded batch before
anything is written; the record names the new layer widths. Hugging Face models are stored as they
are (their pruned matrices in the compact encoding), with their config, tokenizer and
sentence-transformers files; ``fmt="hf"`` writes a plain, dense Hugging Face directory instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TicketlabError
from ..models import create_model
from ..outputs import check_output_directory
from .compact import compact_model
from .package import write_package
from .sources import Source, resolve_source

#: Largest relative difference allowed between the compacted and the masked network's outputs.
COMPACTION_TOLERANCE = 1e-5


def build_vision_model(spec: dict[str, Any]) -> nn.Module:
    """The registered architecture of ``spec`` (weights to be loaded), in eval mode."""
    return create_model(spec["model"], tuple(spec["input_shape"]), int(spec["num_classes"]), seed=0,
                        width=spec.get("width", 1.0)).eval()


def example_batch(spec: dict[str, Any], batch: int = 8, seed: int = 0) -> torch.Tensor:
    """A seeded Gaussian batch of the model's input shape (outputs are compared on it)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *spec["input_shape"], generator=generator)


def relative_difference(reference: torch.Tensor, other: torch.Tensor) -> float:
    """max |a - b| / max |a| (0 when both are zero)."""
    scale = float(reference.abs().max())
    diff = float((reference - other).abs().max())
    return diff / scale if scale > 0 else diff


def _compacted(source: Source) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The compacted state dict and its report, or the original state and None if nothing shrinks."""
    model = build_vision_model(source.spec)
    try:
        model.load_state_dict(source.state)
    except RuntimeError:
        raise TicketlabError(f"The weights in {str(source.path)!r} do not fit a {source.spec['model']} "
                             f"for inputs {tuple(source.spec['input_shape'])}.") from None
    example = example_batch(source.spec)
    try:
        compacted, report = compact_model(model, example[:1])
    except TicketlabError as err:
        return source.state, {"skipped": str(err)}
    if report.removed == 0:
        return source.state, {**report.to_json(), "removed_units": 0}
    with torch.no_grad():
        difference = relative_difference(model(example), compacted(example))
    if difference > COMPACTION_TOLERANCE:  # a bug, never a user error: refuse rather than export a wrong model
        raise TicketlabError(f"Compaction changed the outputs by {difference:.2e} (relative); exported nothing.")
    return compacted.state_dict(), {**report.to_json(), "removed_units": report.removed,
                                    "max_relative_difference": difference}


def export(src: str | Path, out: str | Path, *, seed: int | None = None, round_index: int | None = None,
           fmt: str = "compact", compact: bool = True) -> dict[str, Any]:
    """Export ``src`` to the new directory ``out``; returns the record written as ``ticketlab.json``.

    ``out`` must lie outside ``src`` and outside every run and export directory
    (`check_output_directory`); it is written atomically, and a rerun after a kill finds nothing or
    the complete directory (`write_package`).
    """
    check_output_directory(Path(out), [Path(src)])
    source = resolve_source(src, seed=seed, round_index=round_index)
    state, compaction = source.state, None
    if source.kind == "vision" and compact:
        state, compaction = _compacted(source)
    extra = {"compaction": compaction} if compaction is not None else {}
    return write_package(source, Path(out), fmt=fmt, state=state, extra=extra)
