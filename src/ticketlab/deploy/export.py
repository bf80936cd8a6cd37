"""`export`: a run's ticket or a pruned Hugging Face model -> a directory that rebuilds it, smaller.

Every format writes the same module: the network compacted once here.

* vision tickets — `compact_model` removes dead units and channels (and folds constants) when that
  removes anything; a channel ticket becomes a smaller dense network;
* transformers pruned with ``ticketlab llm prune --granularity channel | head | channel+head`` —
  `compact_transformer` removes the heads and MLP channels their ``masks.safetensors`` prunes
  whole. Other Hugging Face sources (unstructured, N:M) are kept at their shapes.

The compacted network's outputs are checked against the masked network's on a seeded input
before anything is written (relative difference at most `COMPACTION_TOLERANCE`), and the record
(``ticketlab.json``) names the widths before and after. Then the format decides the files:

* ``compact`` — every tensor in the compact encoding (``weights.safetensors``); a transformer's
  record keeps the groups each block kept, so `ticketlab.deploy.load` rebuilds blocks of
  different widths, which no transformers config can describe;
* ``hf`` — a plain Hugging Face directory (transformers and sentence-transformers load it alone):
  the compacted model with its config updated when `compact_transformer` says a config can
  describe it, refused with the reason otherwise;
* ``onnx`` / ``pt`` — ``weights.safetensors`` as ``compact`` writes it (for ``load`` and ``bench``)
  plus ``model.onnx`` or ``model.pt2`` of the compacted module, each checked against the masked
  model before the directory is renamed into place (`ticketlab.deploy.programs`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TicketlabError
from ..models import create_model
from ..outputs import check_output_directory
from .compact import compact_model
from .package import FORMATS, write_package
from .programs import relative_difference
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


def example_tokens(model: nn.Module, batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    """Seeded token ids ``(batch, length)`` (bounded by the model's context)."""
    from ..llm.adapters import context_length

    length = min(length, context_length(model) or length)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, int(model.config.vocab_size), (batch, length), generator=generator)


@dataclass
class Built:
    """What the formats write: the state dict (compacted where anything was removed), the
    compaction record (None when compaction was not asked for or does not apply), the module the
    programs are made of, the masked model they are checked against (both built only when a
    format needs them), and config attributes a plain HF directory must change."""

    state: dict[str, torch.Tensor]
    compaction: dict[str, Any] | None = None
    module: nn.Module | None = None
    reference: nn.Module | None = None
    config_changes: dict[str, int] = field(default_factory=dict)
    reloadable: bool = True
    why_not_reloadable: str = ""


def _check_compaction(reference: Callable[[], torch.Tensor], compacted: Callable[[], torch.Tensor]) -> float:
    """The relative difference between the masked and the compacted outputs; above the tolerance a
    bug, never a user error: refuse rather than export a wrong model."""
    with torch.no_grad():
        difference = relative_difference(reference(), compacted())
    if not difference <= COMPACTION_TOLERANCE:
        raise TicketlabError(f"Compaction changed the outputs by {difference:.2e} (relative); exported nothing.")
    return difference


# --- vision ------------------------------------------------------------------------------------------
def _vision_model(source: Source) -> nn.Module:
    model = build_vision_model(source.spec)
    try:
        model.load_state_dict(source.state)
    except RuntimeError:
        raise TicketlabError(f"The weights in {str(source.path)!r} do not fit a {source.spec['model']} "
                             f"for inputs {tuple(source.spec['input_shape'])}.") from None
    return model


def _vision(source: Source, compact: bool) -> Built:
    """The masked network and, when ``compact``, its compaction (a traced graph the compaction
    cannot follow leaves the network as it is, with the reason recorded)."""
    model = _vision_model(source)
    if not compact:
        return Built(source.state, None, model, model)
    example = example_batch(source.spec)
    try:
        compacted, report = compact_model(model, example[:1])
    except TicketlabError as err:
        return Built(source.state, {"skipped": str(err)}, model, model)
    if report.removed == 0:
        return Built(source.state, {**report.to_json(), "removed_units": 0}, model, model)
    difference = _check_compaction(lambda: model(example), lambda: compacted(example))
    record = {**report.to_json(), "removed_units": report.removed, "max_relative_difference": difference}
    return Built(compacted.state_dict(), record, compacted, model)


# --- Hugging Face ------------------------------------------------------------------------------------
def _structured(source: Source) -> bool:
    """Whether ``ticketlab llm prune`` removed whole heads or channels (its recorded granularity)."""
    from ..structure.granularity import Granularity

    config = ((source.origin.get("pruning") or {}).get("config") or {})
    try:
        return Granularity.parse(config.get("granularity")).kind == "groups"
    except (TicketlabError, TypeError, ValueError, AttributeError):
        return False


def _hf_masked(source: Source) -> nn.Module:
    """The pruned model as ``ticketlab llm prune`` saved it (its zeros are the mask's)."""
    from ..llm.io import load_pretrained

    return load_pretrained(source.path).model


def _hf_mask(source: Source, model: nn.Module) -> Any:
    """The source's ``masks.safetensors``, checked against the model's parameters."""
    from ..masks import Mask

    path = source.path / "masks.safetensors"
    if not (path.exists() or path.is_symlink()):
        raise TicketlabError(f"{str(source.path)!r} was pruned with whole groups but has no masks.safetensors; "
                             "export it with --no-compaction, or prune it again.")
    mask = Mask.load(path, root=source.path)
    params = dict(model.named_parameters())
    wrong = [n for n in mask if n not in params or tuple(params[n].shape) != tuple(mask[n].shape)]
    if wrong:
        raise TicketlabError(f"The mask file {str(path)!r} does not fit the model beside it (e.g. {wrong[0]!r}).")
    return mask


def _hf(source: Source, compact: bool, needs_module: bool) -> Built:
    """The Hugging Face source as it is, or compacted when it was pruned by whole groups."""
    if not (compact and _structured(source)):
        model = _hf_masked(source) if needs_module else None
        return Built(source.state, None, model, model)
    from .compact_hf import compact_transformer

    model = _hf_masked(source)
    mask = _hf_mask(source, model)
    mask.apply_(model)
    compacted, report = compact_transformer(model, mask)
    if report.removed == 0:
        return Built(source.state, {**report.to_json(), "removed_units": 0}, model, model)
    ids = example_tokens(model)
    difference = _check_compaction(lambda: _outputs(model, ids), lambda: _outputs(compacted, ids))
    record = {**report.to_json(), "removed_units": report.removed, "max_relative_difference": difference,
              "config_before": {name: getattr(model.config, name) for name in report.config_changes
                                if isinstance(getattr(model.config, name, None), int)}}
    full = compacted.state_dict()
    state = {name: (full[name] if name in full else tensor).detach().clone().contiguous()
             for name, tensor in source.state.items()}      # the source's names: tied copies stay out
    return Built(state, record, compacted, model, dict(report.config_changes), report.reloadable,
                 report.why_not_reloadable)


def _outputs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


# --- formats -----------------------------------------------------------------------------------------
def _check_format(fmt: str, source: Source) -> None:
    if fmt not in FORMATS:
        raise TicketlabError(f"Unknown export format {fmt!r}; choose {', '.join(FORMATS[:-1])} or {FORMATS[-1]}.")
    if fmt == "hf" and source.kind != "hf":
        raise TicketlabError("--format hf writes a Hugging Face directory; this source is a ticketlab vision model.")
    if fmt == "onnx":
        from .programs import onnx_available

        missing = onnx_available()
        if missing:
            raise TicketlabError(f"--format onnx writes and checks the program with onnx, onnxscript and "
                                 f"onnxruntime, but {missing}.")


def _refuse_unreloadable(built: Built) -> None:
    """``--format hf`` of a compacted model that no transformers config describes is refused."""
    if built.compaction and built.compaction.get("removed_units") and not built.reloadable:
        raise TicketlabError(f"--format hf cannot hold this compacted model: {built.why_not_reloadable.split(';')[0]}; "
                             "use --format compact, which ticketlab.deploy.load rebuilds.")


def _program_writer(fmt: str, source: Source, built: Built) -> Callable[[Path], dict[str, Any]]:
    """What writes and checks ``model.onnx`` / ``model.pt2`` into a directory, returning its record."""
    from . import programs

    assert built.module is not None and built.reference is not None
    module, signature = programs.portable(source.kind, copy.deepcopy(built.module).eval(),
                                          source.spec.get("input_shape"))
    reference, _ = programs.portable(source.kind, built.reference.eval(), source.spec.get("input_shape"))

    def write(target: Path) -> dict[str, Any]:
        if fmt == "onnx":
            path = target / programs.ONNX_FILE
            programs.write_onnx(module, signature, path)
            check = programs.check_onnx(path, reference, signature)
            how = {"exporter": f"torch.onnx.export(dynamo=True) of torch {torch.__version__}",
                   "load": "onnxruntime.InferenceSession('model.onnx')"}
        else:
            path = target / programs.PROGRAM_FILE
            check = programs.write_program(module, signature, path, reference)
            how = {"exporter": f"torch.export.export of torch {torch.__version__}",
                   "load": "torch.export.load('model.pt2').module() - it unpickles: only a file you trust"}
        files = sorted(p.name for p in target.iterdir() if p.name.startswith(path.name))
        return {"program": {"file": path.name, "files": files, **how, **signature.to_json(), "check": check,
                            "bytes": sum((target / f).stat().st_size for f in files),
                            "sha256": programs.sha256(path)}}

    return write


def export(src: str | Path, out: str | Path, *, seed: int | None = None, round_index: int | None = None,
           fmt: str = "compact", compact: bool = True) -> dict[str, Any]:
    """Export ``src`` to the new directory ``out`` in format ``fmt`` (see the module docstring);
    returns the record written as ``ticketlab.json``.

    ``out`` must lie outside ``src`` and outside every run and export directory
    (`check_output_directory`); it is written atomically, and a rerun after a kill finds nothing or
    the complete directory (`write_package`).
    """
    check_output_directory(Path(out), [Path(src)])
    source = resolve_source(src, seed=seed, round_index=round_index)
    _check_format(fmt, source)
    programs = fmt in ("onnx", "pt")
    if source.kind == "vision":
        built = _vision(source, compact)
    else:
        built = _hf(source, compact, needs_module=programs)
    if fmt == "hf":
        _refuse_unreloadable(built)
    extra = {"compaction": built.compaction} if built.compaction is not None else {}
    writer = _program_writer(fmt, source, built) if programs else None
    return write_package(source, Path(out), fmt=fmt, state=built.state, extra=extra, artifact=writer,
                         config_changes=built.config_changes if fmt == "hf" else None)
