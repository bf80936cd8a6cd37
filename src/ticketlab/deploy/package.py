"""Exported model directories: write them (atomically) and read them back, checked.

A ``compact`` directory holds::

    ticketlab.json        what the directory is: format, version, the model spec, where it came
                          from, layer widths after compaction, file sizes
    weights.safetensors   every tensor in the compact encoding (`ticketlab.deploy.format`)
    config.json, tokenizer files, modules.json, 1_Pooling/ ...   (Hugging Face sources, unchanged)

An ``hf`` directory is a plain Hugging Face model directory (dense ``model.safetensors``, config,
tokenizer and sentence-transformers files) that ``transformers`` and ``sentence-transformers`` load
without ticketlab; for a compacted transformer its ``config.json`` carries the new widths.

An ``onnx`` or ``pt`` directory is a ``compact`` one plus ``model.onnx`` (and ``model.onnx.data``
for models above 1 GiB) or ``model.pt2``: the program, written and checked by
`ticketlab.deploy.programs` inside the temporary directory, before it is renamed into place.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import schema
from ..errors import TicketlabError
from ..files import (METADATA_KEY, atomic_directory, check_tree, read_json, read_safetensors, write_json,
                     write_text)
from ..outputs import same_files, scratch_sibling
from .format import decode_state, encode_state
from .programs import ONNX_FILE, PROGRAM_FILE
from .sources import Source

PACKAGE_FORMAT, PACKAGE_VERSION = "ticketlab-deploy", 1
SPEC_FILE, WEIGHTS_FILE = "ticketlab.json", "weights.safetensors"
FORMATS = ("compact", "hf", "onnx", "pt")
#: Writes a program into the package directory and returns what the record says about it.
ArtifactWriter = Callable[[Path], dict[str, Any]]


@dataclass(frozen=True)
class Sizes:
    """Bytes of the dense and compact weights, in total and over the pruned tensors only."""

    dense_file: int
    compact_file: int
    dense_pruned: int
    compact_pruned: int

    def to_json(self) -> dict[str, Any]:
        return {"dense_file": self.dense_file, "compact_file": self.compact_file,
                "file_ratio": self.compact_file / max(1, self.dense_file),
                "dense_pruned_tensors": self.dense_pruned, "compact_pruned_tensors": self.compact_pruned,
                "pruned_tensor_ratio": self.compact_pruned / max(1, self.dense_pruned)}


def dense_safetensors_bytes(state: dict[str, torch.Tensor]) -> int:
    """The size of a plain safetensors file of ``state`` (header built as safetensors builds it)."""
    header, offset = {}, 0
    for name in sorted(state):
        tensor = state[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": "X", "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"))
    return 8 + math.ceil(len(text) / 8) * 8 + offset


def _copy_files(source: Source, target: Path) -> None:
    for relative in source.files:
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.path / relative, destination)


def write_package(source: Source, out: Path, *, fmt: str = "compact", state: dict[str, torch.Tensor] | None = None,
                  extra: dict[str, Any] | None = None, artifact: ArtifactWriter | None = None,
                  config_changes: dict[str, int] | None = None) -> dict[str, Any]:
    """Write ``source`` (or ``state``, e.g. compacted weights) to the new directory ``out``; return the record.

    ``artifact`` writes the ``onnx`` / ``pt`` program beside the weights (and checks it: a
    TicketlabError there leaves nothing behind); ``config_changes`` are written into the copied
    ``config.json`` of an ``hf`` directory (a compacted transformer's new widths).

    The directory is built under a temporary sibling name and renamed into place at the end
    (`atomic_directory`), so a kill at any instant leaves nothing or the complete directory. If
    ``out`` already holds a complete export (the same command, killed after its rename), the
    package is built again beside it and ``out`` is accepted, unchanged, only if it holds the
    same files byte for byte; any other non-empty ``out`` is refused.
    """
    if fmt not in FORMATS:
        raise TicketlabError(f"Unknown export format {fmt!r}; choose {' or '.join(FORMATS)}.")
    if fmt == "hf" and source.kind != "hf":
        raise TicketlabError("--format hf writes a Hugging Face directory; this source is a ticketlab vision model.")
    state = source.state if state is None else state
    writing = _Writing(fmt, state, extra, artifact, config_changes)
    if (out / SPEC_FILE).is_file():
        return _confirm_package(source, out, writing)
    with atomic_directory(out) as tmp:
        record = _write_files(source, tmp, writing)
    return record


@dataclass(frozen=True)
class _Writing:
    """Everything one package write needs besides the source (built once, used for a fresh write
    or for the byte-for-byte confirmation of a finished one)."""

    fmt: str
    state: dict[str, torch.Tensor]
    extra: dict[str, Any] | None
    artifact: ArtifactWriter | None
    config_changes: dict[str, int] | None


def _confirm_package(source: Source, out: Path, writing: _Writing) -> dict[str, Any]:
    """The record of the export ``out`` already holds, if it is the one this call writes (byte for
    byte, checked against a fresh build in a temporary sibling); a TicketlabError otherwise."""
    with scratch_sibling(out) as tmp:
        record = _write_files(source, tmp, writing)
        if same_files(tmp, out):
            return record
    raise TicketlabError(f"--out {str(out)!r} already holds a different export; choose a new directory so "
                         "nothing is overwritten.")


def _write_files(source: Source, target: Path, writing: _Writing) -> dict[str, Any]:
    """Write every file of the package into the existing directory ``target``; return the record."""
    from safetensors.torch import save_file

    fmt, state = writing.fmt, writing.state
    encoded = fmt != "hf"
    tensors, table = encode_state(state) if encoded else ({}, {})
    _copy_files(source, target)
    if encoded:
        save_file(tensors, str(target / WEIGHTS_FILE), metadata={METADATA_KEY: json.dumps(table, sort_keys=True)})
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(target / "model.safetensors"),
                  metadata={"format": "pt"})
        if writing.config_changes:
            _update_config_file(target / "config.json", writing.config_changes)
    weights = target / (WEIGHTS_FILE if encoded else "model.safetensors")
    sizes = _sizes(source.state, state, table, weights.stat().st_size if encoded else None)
    program = writing.artifact(target) if writing.artifact is not None else {}
    record = {"format": PACKAGE_FORMAT, "version": PACKAGE_VERSION, "kind": source.kind, "layout": fmt,
              "spec": source.spec, "source": {"path": str(source.path), "description": source.description,
                                              **source.origin},
              "sizes": sizes.to_json(), **(writing.extra or {}), **program}
    write_json(target / SPEC_FILE, record)
    return record


def _update_config_file(path: Path, changes: dict[str, int]) -> None:
    """Set ``changes`` in a copied ``config.json`` (every other field as the source wrote it)."""
    config = read_json(path)
    config.update(changes)
    write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def _sizes(original: dict[str, torch.Tensor], state: dict[str, torch.Tensor], table: dict[str, Any],
           compact_file: int | None) -> Sizes:
    """File sizes; 'pruned tensors' are those stored in a sparse encoding (compared with their dense bytes)."""
    dense_file = dense_safetensors_bytes(original)
    infos = table.get("tensors", {})
    sparse = [n for n, i in infos.items() if i["encoding"] != "dense"]
    dense_pruned = sum(state[n].numel() * state[n].element_size() for n in sparse)
    compact_pruned = sum(_encoded_bytes(table, n, state[n]) for n in sparse)
    return Sizes(dense_file, compact_file if compact_file is not None else dense_safetensors_bytes(state),
                 dense_pruned, compact_pruned)


def _encoded_bytes(table: dict[str, Any], name: str, tensor: torch.Tensor) -> int:
    return int(table["tensors"][name]["nbytes"])


_COUNT, _RATIO = schema.integer(0, 2**62), schema.real(0)
#: What the readers of an exported directory use from its ``ticketlab.json`` (`load`, ``bench``):
#: the kind and layout, the model spec (checked in full against the weights by `load`), the
#: file sizes, and the compaction record.
RECORD_SCHEMA = schema.record(
    {"kind": schema.one_of("vision", "hf"), "spec": schema.dict_of(schema.anything()),
     "sizes": schema.record({"dense_file": _COUNT, "compact_file": _COUNT, "file_ratio": _RATIO,
                             "dense_pruned_tensors": _COUNT, "compact_pruned_tensors": _COUNT,
                             "pruned_tensor_ratio": _RATIO})},
    {"layout": schema.one_of(*FORMATS),
     "source": schema.record(optional={"description": schema.text()}),
     "compaction": schema.nullable(schema.record(optional={
         "removed_units": _COUNT, "max_relative_difference": _RATIO, "skipped": schema.text(),
         "widths_before": schema.dict_of(_COUNT), "widths_after": schema.dict_of(_COUNT),
         "kept_constant_units": schema.dict_of(_COUNT), "not_compacted": schema.anything(),
         # transformers (`compact_transformer`): the groups each family kept rebuild the model
         "kept_groups": schema.dict_of(schema.list_of(_COUNT, max_items=1 << 24)),
         "blocks": schema.list_of(schema.dict_of(_COUNT)), "uniform": schema.flag(),
         "config_changes": schema.dict_of(_COUNT), "config_before": schema.dict_of(_COUNT),
         "reloadable": schema.flag(),
         "why_not_reloadable": schema.text(), "kept_dead": schema.list_of(schema.text())})),
     "program": schema.record({"file": schema.one_of(ONNX_FILE, PROGRAM_FILE)}, {
         "files": schema.list_of(schema.text(max_length=200)), "bytes": _COUNT, "sha256": schema.text(max_length=64),
         "check": schema.anything(), "inputs": schema.anything(), "output": schema.text(max_length=100)})})


def read_package(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The record and the decoded state dict of an exported directory; one sentence if anything is off.

    The directory must hold only regular files and directories, none a link to outside it
    (`check_tree`); ``ticketlab.json`` must fit `RECORD_SCHEMA` (no NaN), and the weights are
    decoded only after their table and declared sizes are checked (`decode_state`).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise TicketlabError(f"{str(directory)!r} is not a directory exported by ticketlab export.")
    spec_path = directory / SPEC_FILE
    if not (spec_path.exists() or spec_path.is_symlink()):
        raise TicketlabError(f"{str(directory)!r} has no {SPEC_FILE}; it was not written by ticketlab export.")
    check_tree(directory, "exported directory")
    record = read_json(spec_path, root=directory, finite=True)
    if not isinstance(record, dict) or record.get("format") != PACKAGE_FORMAT:
        raise TicketlabError(f"{str(spec_path)!r} does not describe a ticketlab export.")
    if record.get("version") != PACKAGE_VERSION:
        raise TicketlabError(f"{str(directory)!r} has export format version {repr(record.get('version'))[:40]}; "
                             f"this ticketlab reads version {PACKAGE_VERSION}.")
    schema.validate(record, RECORD_SCHEMA, spec_path, "a ticketlab export record")
    if record.get("layout") == "hf":
        tensors, _ = read_safetensors(directory / "model.safetensors", "weights file", root=directory)
        return record, tensors
    tensors, table = read_safetensors(directory / WEIGHTS_FILE, "compact weights file", root=directory)
    return record, decode_state(tensors, table, f"{str(directory / WEIGHTS_FILE)!r}")
