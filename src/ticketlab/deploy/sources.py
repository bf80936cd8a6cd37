"""What `ticketlab export` can read: a unit of a run, a run directory, or a pruned Hugging Face model.

* a unit directory (``runs/x/seed-0/round-10``, a control, a prune-init density): its trained
  ``weights.safetensors`` and ``mask.safetensors``; the model is named by the run's ``model.json``;
* a run directory with ``seed`` / ``round`` (default: the sparsest winning ticket of the first
  seed; for prune-init / sparse-train runs ``round`` indexes the densities, default the smallest);
* a Hugging Face directory written by ``ticketlab llm prune`` (it holds ``pruning_report.json``):
  its safetensors weights, config, tokenizer and sentence-transformers files.

Every way a path can be none of these is one `TicketlabError` sentence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import TicketlabError
from ..files import read_json, read_safetensors

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
    record = read_json(path / "config.json") if (path / "config.json").is_file() else None
    if isinstance(record, dict) and set(record) == {"kind", "config"}:
        return _unit_source(_pick_unit(path, record, seed, round_index))
    if isinstance(record, dict) and ("model_type" in record or "architectures" in record):
        if seed is not None or round_index is not None:
            raise TicketlabError("--seed and --round apply to run directories, not to model directories.")
        return _hf_source(path)
    raise TicketlabError(f"{str(path)!r} is neither a round of a ticketlab run nor a model directory written by "
                         "ticketlab llm prune.")


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
    if not spec_path.is_file():
        raise TicketlabError(f"{str(root)!r} has no model.json (it was written by an older ticketlab); run the "
                             "same command on it once more to add it, then export again.")
    spec = read_json(spec_path)
    if not (isinstance(spec, dict) and isinstance(spec.get("model"), str)
            and isinstance(spec.get("input_shape"), list) and isinstance(spec.get("num_classes"), int)):
        raise TicketlabError(f"{str(spec_path)!r} is damaged.")
    width = spec.get("width", 1.0)
    if isinstance(width, bool) or not isinstance(width, (int, float)):
        raise TicketlabError(f"{str(spec_path)!r} is damaged (its width is not a number).")
    out = {"model": spec["model"], "input_shape": [int(s) for s in spec["input_shape"]],
           "num_classes": spec["num_classes"]}
    if width != 1.0:  # a --width run's networks; the default is left out, as in model.json
        out["width"] = float(width)
    return out


def _unit_source(unit: Path) -> Source:
    root = _run_root(unit)
    spec = _model_spec(root)
    result = read_json(unit / "result.json")
    state, _ = read_safetensors(unit / "weights.safetensors", "weights file")
    density = result.get("density") if isinstance(result, dict) else None
    where = unit.relative_to(root)
    label = f"{where} of {root}" + (f" ({100 * density:.2f}% of prunable weights kept)" if density else "")
    origin = {"run": str(root), "unit": str(where), "density": density,
              "test_accuracy": result.get("test_accuracy") if isinstance(result, dict) else None}
    return Source("vision", unit, state, spec, label, origin=origin)


def _pick_unit(root: Path, record: dict[str, Any], seed: int | None, round_index: int | None) -> Path:
    """The unit directory of a run chosen by ``seed`` / ``round_index`` (see the module docstring)."""
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
    """The sparsest round whose ticket is a winning ticket (``summary.json``)."""
    path = root / "summary.json"
    if not path.is_file():
        raise TicketlabError(f"{str(root)!r} has no summary.json yet; pass --round to choose a round.")
    summary = read_json(path)
    rounds = summary.get("rounds") if isinstance(summary, dict) else None
    if not isinstance(rounds, list):
        raise TicketlabError(f"{str(path)!r} is not a ticketlab summary.")
    winners = [r.get("round") for r in rounds if isinstance(r, dict) and r.get("winning_ticket") and r.get("round")]
    if not winners:
        raise TicketlabError(f"No pruned round of {str(root)!r} is a winning ticket; pass --round to choose one.")
    return max(winners)


# --- Hugging Face models -----------------------------------------------------------------------------
def _hf_weights(path: Path) -> dict[str, torch.Tensor]:
    if (path / "model.safetensors").is_file():
        return read_safetensors(path / "model.safetensors", "weights file")[0]
    index_path = path / "model.safetensors.index.json"
    if not index_path.is_file():
        raise TicketlabError(f"{str(path)!r} has no safetensors weights (model.safetensors).")
    index = read_json(index_path)
    shards = sorted(set((index.get("weight_map") or {}).values())) if isinstance(index, dict) else []
    if not shards or any("/" in s or "\\" in s or s.startswith(".") for s in shards):
        raise TicketlabError(f"{str(index_path)!r} is damaged.")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(read_safetensors(path / shard, "weights shard")[0])
    return state


def _hf_source(path: Path) -> Source:
    from ..llm.io import SENTENCE_TRANSFORMERS_DIRS, SENTENCE_TRANSFORMERS_FILES, refuse_remote_code

    if not (path / "pruning_report.json").is_file():
        raise TicketlabError(f"{str(path)!r} is a Hugging Face model that ticketlab did not prune (no "
                             "pruning_report.json); prune it with ticketlab llm prune first.")
    refuse_remote_code(path)
    config = read_json(path / "config.json")
    files = [name for name in (*HF_CONFIG_FILES, *TOKENIZER_FILES, *SENTENCE_TRANSFORMERS_FILES)
             if (path / name).is_file()]
    for prefix in SENTENCE_TRANSFORMERS_DIRS:
        folder = path / prefix
        if folder.is_dir() and not folder.is_symlink():
            files += [str(p.relative_to(path)) for p in sorted(folder.rglob("*")) if p.is_file()]
    report = read_json(path / "pruning_report.json")
    description = f"{path} ({report.get('config', {}).get('method', '?')} pruned)" if isinstance(report, dict) else str(path)
    spec = {"model_type": config.get("model_type"), "architectures": config.get("architectures")}
    origin = {"model_dir": str(path), "pruning": {k: report.get(k) for k in ("config", "model")}
              if isinstance(report, dict) else None}
    return Source("hf", path, _hf_weights(path), spec, description, files, origin=json.loads(json.dumps(origin)))
