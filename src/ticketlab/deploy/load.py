"""`load`: an exported directory -> a ready model (a registered network or a Hugging Face model).

Every layout but ``hf`` is read from its ``weights.safetensors``: an ``onnx`` or ``pt`` export's
program (``model.onnx``, ``model.pt2``) is never opened here — ``torch.export.load`` unpickles, so a
crafted ``model.pt2`` could run code (`ticketlab.deploy.programs`). A compacted network is rebuilt
at its compacted widths: a vision network from its registered architecture resized to the
weights, a transformer from its original config shrunk block by block to the groups the record
says each block kept (`ticketlab.deploy.compact_hf.shrink_to_groups`), so blocks of different
widths load too.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TicketlabError
from .compact import resize_to_state
from .export import build_vision_model, example_batch
from .package import SPEC_FILE, read_package
from .sources import fit_vision_spec, vision_spec


def _vision_model(record: dict[str, Any], state: dict[str, torch.Tensor], directory: Path) -> nn.Module:
    """The registered architecture, resized to the (compacted) weights, checked on one input.

    The network is laid out on the meta device and its sizes checked against the weights first
    (`fit_vision_spec`); the weights are then assigned in place of the meta tensors, so building
    it allocates nothing beyond the weights themselves, whatever the spec declares.
    """
    where = repr(str(directory))
    spec_where = repr(str(directory / SPEC_FILE))
    spec = vision_spec(record["spec"], spec_where)
    compacted = bool((record.get("compaction") or {}).get("removed_units"))
    model = fit_vision_spec(spec, state, spec_where, where, compacted=compacted)
    model.load_state_dict(state, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # a buffer kept out of the state dict
        model = resize_to_state(build_vision_model(spec), state)
        model.load_state_dict(state)
    try:
        with torch.no_grad():
            out = model.eval()(example_batch(spec, 1))
    except RuntimeError:
        out = None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, spec["num_classes"]):
        raise TicketlabError(f"The weights in {where} do not fit the model its ticketlab.json names.")
    return model


#: A compacted transformer's full-width skeleton is built before it is shrunk: it may take at most
#: this multiple of the stored weights (removing 90% of a LLaMA-7B's heads and MLP channels leaves
#: ~1/7 of its bytes; a crafted config declaring more is refused before anything is allocated).
COMPACTED_EXPANSION = 16


def _hf_config(directory: Path) -> Any:
    from ..llm.io import _transformers, quiet_transformers, refuse_remote_code

    refuse_remote_code(directory)
    try:
        with quiet_transformers():
            return _transformers().AutoConfig.from_pretrained(str(directory), local_files_only=True,
                                                              trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - transformers raises many types for a broken config
        raise TicketlabError(f"Cannot read the config in {str(directory)!r} ({type(err).__name__}).") from None


def _check_compacted_fits(auto: Any, config: Any, kept: dict[str, list[int]], state: dict[str, torch.Tensor],
                          directory: Path) -> None:
    """On the meta device (nothing allocated): the full skeleton may take at most
    `COMPACTED_EXPANSION` x the stored bytes, and, shrunk to ``kept``, must have exactly the
    names and shapes of ``state``."""
    from .. import schema
    from ..errors import first_line
    from ..llm.io import quiet_transformers
    from .compact_hf import shrink_to_groups

    where = repr(str(directory / "config.json"))
    record = repr(str(directory / SPEC_FILE))
    try:
        with quiet_transformers(), torch.device("meta"):
            skeleton = auto.from_config(copy.deepcopy(config), trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - sizes torch cannot lay out raise several types
        raise TicketlabError(f"{where} describes a model that cannot be built ({type(err).__name__}: "
                             f"{first_line(err)}).") from None
    declared = sum(t.numel() * t.element_size() for t in (*skeleton.parameters(), *skeleton.buffers()))
    present = sum(t.numel() * t.element_size() for t in state.values())
    schema.check_declared(declared, present, where, "a model", expansion=COMPACTED_EXPANSION)
    shrink_to_groups(skeleton, kept, record)
    expected = {n: tuple(t.shape) for n, t in skeleton.state_dict().items()}
    wrong = [n for n, t in state.items() if expected.get(n) != tuple(t.shape)]
    if wrong:
        raise TicketlabError(f"The weights in {str(directory)!r} do not fit its config shrunk as {record} says "
                             f"(e.g. {wrong[0]!r}).")


def _hf_model(directory: Path, state: dict[str, torch.Tensor], record: dict[str, Any]) -> nn.Module:
    """A transformers model built from the directory's config, with the decoded weights (the
    config's sizes checked against the weights first: `check_config_fits`); a compacted export's
    model is shrunk to the groups its record kept before the weights go in."""
    from ..llm.io import _transformers, check_config_fits, kind_from_config, quiet_transformers
    from .compact_hf import shrink_to_groups

    transformers = _transformers()
    config = _hf_config(directory)
    kind = kind_from_config(config)
    auto = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModel
    compaction = record.get("compaction") or {}
    # an hf directory's config already holds the compacted widths; the others hold the original's
    shrunk = compaction.get("removed_units") and record.get("layout") != "hf"
    kept = compaction.get("kept_groups") if shrunk else None
    if kept is None:
        check_config_fits(config, kind, sum(t.numel() * t.element_size() for t in state.values()),
                          repr(str(directory / "config.json")))
    else:
        _check_compacted_fits(auto, config, kept, state, directory)
    with quiet_transformers():
        model = auto.from_config(config)
    if kept is not None:
        shrink_to_groups(model, kept, repr(str(directory / SPEC_FILE)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    real_missing = [k for k in missing if not any(k == t or k.endswith(t) for t in tied)]
    if unexpected or real_missing:
        what = (unexpected or real_missing)[0]
        raise TicketlabError(f"The weights in {str(directory)!r} do not fit its config (e.g. {what!r}).")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()


def load(directory: str | Path, *, sparse: bool = True, **sparsify_options: Any) -> nn.Module:
    """The model exported to ``directory``, in eval mode, ready to run.

    With ``sparse=True`` (default) its pruned layers are replaced by the fastest execution this
    machine offers (`ticketlab.deploy.sparsify`); ``sparse=False`` returns the plain dense model.
    """
    directory = Path(directory)
    record, state = read_package(directory)
    if record["kind"] == "vision":
        model = _vision_model(record, state, directory)
    else:
        model = _hf_model(directory, state, record)
    if sparse:
        from .execute import sparsify

        if record["kind"] == "vision":
            model = fold_batchnorm(model)
            sparsify_options.setdefault("example", example_batch(record["spec"], 1))
        model = sparsify(model, **sparsify_options)
    return model


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` (eval mode) with every BatchNorm that follows a convolution folded into that
    convolution's weights and bias (torch.fx's ``fuse``): the same function up to float rounding,
    one elementwise pass fewer per layer, which is a large share of a compacted ticket's time once
    its convolutions are small. Zero weights stay zero (folding scales rows). A model torch.fx
    cannot trace is returned as it is."""
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model
    with warnings.catch_warnings():   # the module imports torch.jit helpers that warn of their deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model.eval())
    except Exception:  # noqa: BLE001 - untraceable models simply keep their BatchNorms
        return model
