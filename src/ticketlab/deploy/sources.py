"""What `ticketlab export` can read: a unit of a run, a run directory, or a pruned Hugging Face model.

* a unit directory (``runs/x/seed-0/round-10``, a control, a prune-init density): its trained
  ``weights.safetensors`` and ``mask.safetensors``; the model is named by the run's ``model.json``;
* a run directory with ``seed`` / ``round`` (default: the sparsest winning ticket of the first
  seed; for prune-init / sparse-train runs ``round`` indexes the densities, default the smallest);
* a Hugging Face directory written by ``ticketlab llm prune`` (it holds ``pruning_report.json``):
  its safetensors weights, config, tokenizer and sentence-transformers files.

Every way a path can be none of these is one `TicketlabError` sentence. Every file is read as a
regular file inside the directory given (`ticketlab.files`), every JSON field by schema, and a
vision model's spec (``num_classes``, ``input_shape``, ``width``) is checked against the weights'
shapes on the meta device before any network is built (`fit_vision_spec`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .. import schema
from ..user_code import is_user_code
from ..errors import TicketlabError, first_line
from ..files import check_inside, check_tree, read_json, read_safetensors

SourceKind = Literal["vision", "hf"]
#: Files of a Hugging Face model directory copied next to the weights (besides tokenizer files).
HF_CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "added_tokens.json")


@dataclass
class Source:
    """Weights to export and what rebuilds the model around them.

    ``spec`` for a vision model: ``{"model", "input_shape", "num_classes"}``; for a Hugging Face
    model: ``{"model_type", "architectures"}``. ``files`` are paths relative to ``path`` that go
    into the exported directory unchanged (config, tokenizer, sentence-transformers files).
    """

    kind: SourceKind
    path: Path
    state: dict[str, torch.Tensor]
    spec: dict[str, Any]
    description: str
    files: list[str] = field(default_factory=list)
    origin: dict[str, Any] = field(default_factory=dict)


def resolve_source(src: str | Path, *, seed: int | None = None, round_index: int | None = None) -> Source:
    """The `Source` a path names (see the module docstring)."""
    path = Path(src)
    if not path.exists():
        raise TicketlabError(f"{str(path)!r} does not exist.")
    if not path.is_dir():
        raise TicketlabError(f"{str(path)!r} is a file; give a run directory, one of its rounds, or a model "
                             "directory written by ticketlab llm prune.")
    if (path / "weights.safetensors").is_file() and (path / "result.json").is_file():
        if seed is not None or round_index is not None:
            raise TicketlabError("--seed and --round choose a round of a run directory; this path is already one round.")
        return _unit_source(path)
    record = read_json(path / "config.json", root=path) if _present(path / "config.json") else None
    if isinstance(record, dict) and set(record) == {"kind", "config"}:
        return _unit_source(_pick_unit(path, record, seed, round_index))
    if isinstance(record, dict) and ("model_type" in record or "architectures" in record):
        if seed is not None or round_index is not None:
            raise TicketlabError("--seed and --round apply to run directories, not to model directories.")
        return _hf_source(path)
    raise TicketlabError(f"{str(path)!r} is neither a round of a ticketlab run nor a model directory written by "
                         "ticketlab llm prune.")


def _present(path: Path) -> bool:
    """Whether a file is there at all (a link counts even when broken: its reader refuses it)."""
    return path.exists() or path.is_symlink()


# --- vision model specs: model.json of a run, the spec of an exported directory ----------------------
#: The largest input dimension and class count accepted before any size is compared with weights.
MAX_DIMENSION = 2**31
VISION_SPEC = schema.record(
    {"model": schema.text(max_length=1000),
     "input_shape": schema.list_of(schema.integer(1, MAX_DIMENSION), min_items=1, max_items=8),
     "num_classes": schema.integer(2, MAX_DIMENSION)},
    {"width": schema.real(0, 64)})


def vision_spec(spec: Any, where: str) -> dict[str, Any]:
    """The spec a ``model.json`` (or an export's ``ticketlab.json``) gives, checked by `VISION_SPEC`:
    ``{"model", "input_shape", "num_classes"}`` and ``"width"`` when it is not 1. ``where`` names
    the file in the sentence of a refusal."""
    problem = schema.problem(spec, VISION_SPEC)
    if problem is not None:
        raise TicketlabError(f"{where} is not a ticketlab model spec ({problem}).")
    out = {"model": spec["model"], "input_shape": list(spec["input_shape"]), "num_classes": spec["num_classes"]}
    if spec.get("width", 1.0) != 1.0:  # a --width run's networks; the default is left out, as in model.json
        out["width"] = float(spec["width"])
    return out


def _state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def fit_vision_spec(spec: dict[str, Any], state: dict[str, torch.Tensor], where: str, weights: str, *,
                    compacted: bool = False) -> nn.Module:
    """The network ``spec`` names, laid out on the meta device (nothing allocated), once its sizes
    are known to fit ``state``; else a TicketlabError naming ``where`` (the file that holds the
    spec) and, where they do not fit, ``weights`` (the file that holds ``state``).

    One input of ``input_shape`` and the full-width network may take at most
    `ticketlab.schema.check_declared`'s multiple of the weights' bytes; the classifier's
    ``num_classes`` rows must be among the stored elements; and the network's tensors must have
    exactly the names and shapes of ``state`` — after `resize_to_state` when ``compacted`` (an
    export whose hidden units were removed), as they are otherwise. Returns that meta network
    (resized when ``compacted``), ready for ``load_state_dict(state, assign=True)``.
    """
    from .compact import resize_to_state

    present = _state_bytes(state)
    schema.check_declared(4 * math.prod(spec["input_shape"]), present, where, "an input")
    if spec["num_classes"] > sum(t.numel() for t in state.values()):
        raise TicketlabError(f"{where} declares {spec['num_classes']:,} classes, more than the weights it holds "
                             "could classify; it is damaged or crafted, and nothing was built from it.")
    model = _laid_out(spec, where)
    declared = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    schema.check_declared(declared, present, where, "a network")
    if compacted:
        with torch.device("meta"):
            resize_to_state(model, state)
    expected = {name: list(t.shape) for name, t in model.state_dict().items()}
    stored = {name: list(t.shape) for name, t in state.items()}
    if expected != stored:
        differing = sorted(set(expected) ^ set(stored)) or [n for n in expected if expected[n] != stored[n]]
        raise TicketlabError(f"The weights in {weights} do not fit the model {where} names (e.g. {differing[0]!r}).")
    return model


def _laid_out(spec: dict[str, Any], where: str) -> nn.Module:
    """``spec``'s network on the meta device; a user builder that computes with tensors (which meta
    tensors cannot give values for, e.g. ``int(torch.tensor(shape).prod())``) is built on the CPU
    instead — it is code the user typed on this command line, and the sizes it is given were
    bounded by the weights' bytes before (`fit_vision_spec`)."""
    from .export import build_vision_model

    user = is_user_code(spec.get("model"))
    try:
        with torch.device("meta"):
            return build_vision_model(spec)
    except TicketlabError:
        if not user:
            raise
    except Exception as err:  # noqa: BLE001 - a builder given sizes it cannot lay out
        if not user:
            raise TicketlabError(f"{where} names a model that cannot be built ({type(err).__name__}: "
                                 f"{first_line(err)}).") from None
    return build_vision_model(spec)   # the user's own builder, on the CPU (a real failure says so again)


# --- runs --------------------------------------------------------------------------------------------
def _run_root(unit: Path) -> Path:
    for parent in unit.parents:
        record = parent / "config.json"
        if record.is_file():
            data = read_json(record)
            if isinstance(data, dict) and set(data) == {"kind", "config"}:
                return parent
    raise TicketlabError(f"{str(unit)!r} holds trained weights but lies in no ticketlab run directory.")


def _model_spec(root: Path) -> dict[str, Any]:
    spec_path = root / "model.json"
    if not _present(spec_path):
        raise TicketlabError(f"{str(root)!r} has no model.json (it was written by an older ticketlab); run the "
                             "same command on it once more to add it, then export again.")
    return vision_spec(read_json(spec_path, root=root, finite=True), repr(str(spec_path)))


#: What export reads from a unit's ``result.json`` (to describe the source).
_RESULT = schema.record(optional={"density": schema.nullable(schema.real(0, 1)),
                                  "test_accuracy": schema.nullable(schema.real(0, 100))})


def _unit_source(unit: Path) -> Source:
    root = _run_root(unit)
    check_inside(unit, root, "round directory")
    spec, spec_where = _model_spec(root), repr(str(root / "model.json"))
    result = schema.validate(read_json(unit / "result.json", root=root, finite=True), _RESULT, unit / "result.json",
                             "a ticketlab result")
    state, _ = read_safetensors(unit / "weights.safetensors", "weights file", root=root)
    fit_vision_spec(spec, state, spec_where, repr(str(unit / "weights.safetensors")))
    density = result.get("density")
    where = unit.relative_to(root)
    label = f"{where} of {root}" + (f" ({100 * density:.2f}% of prunable weights kept)" if density else "")
    origin = {"run": str(root), "unit": str(where), "density": density, "test_accuracy": result.get("test_accuracy")}
    return Source("vision", unit, state, spec, label, origin=origin)


#: What export reads from a run's ``config.json``: its kind, seeds and densities.
_RUN_RECORD = schema.record({"kind": schema.text(max_length=100), "config": schema.record(optional={
    "seeds": schema.nullable(schema.list_of(schema.integer())),
    "densities": schema.nullable(schema.list_of(schema.real(0, 1)))})})


def _pick_unit(root: Path, record: dict[str, Any], seed: int | None, round_index: int | None) -> Path:
    """The unit directory of a run chosen by ``seed`` / ``round_index`` (see the module docstring)."""
    schema.validate(record, _RUN_RECORD, root / "config.json", "a ticketlab run record")
    config = record["config"]
    seeds = config.get("seeds") or [0]
    seed = seeds[0] if seed is None else seed
    if seed not in seeds:
        raise TicketlabError(f"The run has no seed {seed}; its seeds are {', '.join(map(str, seeds))}.")
    if record["kind"] == "imp":
        round_index = _winning_round(root, seed) if round_index is None else round_index
        unit = root / f"seed-{seed}" / f"round-{round_index:02d}"
    elif record["kind"] in ("prune-init", "sparse-train"):
        densities = sorted(config.get("densities") or [], reverse=True)
        index = len(densities) - 1 if round_index is None else round_index
        if not 0 <= index < len(densities):
            raise TicketlabError(f"--round {index} is out of range: the run has {len(densities)} densities.")
        unit = root / f"seed-{seed}" / f"density-{densities[index]:g}"
    else:
        raise TicketlabError(f"{str(root)!r} is a {record['kind']} directory; export one of its method runs, "
                             f"e.g. {str(root / 'imp')!r}.")
    if not (unit / "result.json").is_file():
        raise TicketlabError(f"{str(unit)!r} has not finished training yet.")
    return unit


def _winning_round(root: Path, seed: int) -> int:
    """The sparsest round whose ticket is a winning ticket (``summary.json``, read by `load_summary`)."""
    from ..report import load_summary

    if not _present(root / "summary.json"):
        raise TicketlabError(f"{str(root)!r} has no summary.json yet; pass --round to choose a round.")
    rounds = load_summary(root)["rounds"]
    winners = [r["round"] for r in rounds if r["winning_ticket"] and r["round"]]
    if not winners:
        raise TicketlabError(f"No pruned round of {str(root)!r} is a winning ticket; pass --round to choose one.")
    return max(winners)


# --- Hugging Face models -----------------------------------------------------------------------------
def _hf_weights(path: Path) -> dict[str, torch.Tensor]:
    from ..llm.io import weight_files

    state: dict[str, torch.Tensor] = {}
    for file in weight_files(path, root=path):
        state.update(read_safetensors(file, "weights file", root=path)[0])
    return state


#: What export reads from a pruned model's ``config.json`` and ``pruning_report.json``.
_HF_CONFIG = schema.record(optional={"model_type": schema.nullable(schema.text(max_length=200)),
                                     "architectures": schema.nullable(schema.list_of(schema.text(max_length=200)))})
_PRUNING_REPORT = schema.record(optional={"config": schema.record(optional={"method": schema.anything()})})


def _hf_source(path: Path) -> Source:
    from ..llm.io import SENTENCE_TRANSFORMERS_DIRS, SENTENCE_TRANSFORMERS_FILES, refuse_remote_code

    if not _present(path / "pruning_report.json"):
        raise TicketlabError(f"{str(path)!r} is a Hugging Face model that ticketlab did not prune (no "
                             "pruning_report.json); prune it with ticketlab llm prune first.")
    check_tree(path, "model directory")  # written by ticketlab llm prune: nothing in it points elsewhere
    refuse_remote_code(path)
    config = schema.validate(read_json(path / "config.json", root=path), _HF_CONFIG, path / "config.json",
                             "a Hugging Face config")
    files = [name for name in (*HF_CONFIG_FILES, *TOKENIZER_FILES, *SENTENCE_TRANSFORMERS_FILES)
             if (path / name).is_file()]
    for prefix in SENTENCE_TRANSFORMERS_DIRS:
        folder = path / prefix
        if folder.is_dir() and not folder.is_symlink():
            files += [str(p.relative_to(path)) for p in sorted(folder.rglob("*")) if p.is_file()]
    report = schema.validate(read_json(path / "pruning_report.json", root=path), _PRUNING_REPORT,
                             path / "pruning_report.json", "a ticketlab pruning report")
    description = f"{path} ({str(report.get('config', {}).get('method', '?'))[:100]} pruned)"
    spec = {"model_type": config.get("model_type"), "architectures": config.get("architectures")}
    origin = {"model_dir": str(path), "pruning": {k: report.get(k) for k in ("config", "model")}}
    return Source("hf", path, _hf_weights(path), spec, description, files, origin=json.loads(json.dumps(origin)))
