"""`load`: an exported directory -> a ready model (a registered network or a Hugging Face model)."""

from __future__ import annotations

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


def _hf_model(directory: Path, state: dict[str, torch.Tensor]) -> nn.Module:
    """A transformers model built from the directory's config, with the decoded weights (the
    config's sizes checked against the weights first: `check_config_fits`)."""
    from ..llm.io import _transformers, check_config_fits, kind_from_config, quiet_transformers, refuse_remote_code

    refuse_remote_code(directory)
    transformers = _transformers()
    try:
        with quiet_transformers():
            config = transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True,
                                                             trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - transformers raises many types for a broken config
        raise TicketlabError(f"Cannot read the config in {str(directory)!r} ({type(err).__name__}).") from None
    kind = kind_from_config(config)
    check_config_fits(config, kind, sum(t.numel() * t.element_size() for t in state.values()),
                      repr(str(directory / "config.json")))
    auto = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModel
    with quiet_transformers():
        model = auto.from_config(config)
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
        model = _hf_model(directory, state)
    if sparse:
        from .execute import sparsify

        if record["kind"] == "vision":
            sparsify_options.setdefault("example", example_batch(record["spec"], 1))
        model = sparsify(model, **sparsify_options)
    return model
