"""`load`: an exported directory -> a ready model (a registered network or a Hugging Face model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TicketlabError
from .compact import resize_to_state
from .export import build_vision_model, example_batch
from .package import read_package


def _vision_model(record: dict[str, Any], state: dict[str, torch.Tensor], where: str) -> nn.Module:
    """The registered architecture, resized to the (compacted) weights, checked on one input."""
    spec = record["spec"]
    if not (isinstance(spec.get("model"), str) and isinstance(spec.get("input_shape"), list)
            and isinstance(spec.get("num_classes"), int)):
        raise TicketlabError(f"The ticketlab.json in {where} has a malformed model spec.")
    model = resize_to_state(build_vision_model(spec), state)
    try:
        model.load_state_dict(state)
        with torch.no_grad():
            model.eval()(example_batch(spec, 1))
    except RuntimeError:
        raise TicketlabError(f"The weights in {where} do not fit the model its ticketlab.json names.") from None
    return model


def _hf_model(directory: Path, state: dict[str, torch.Tensor]) -> nn.Module:
    """A transformers model built from the directory's config, with the decoded weights."""
    from ..llm.io import _transformers, kind_from_config, quiet_transformers, refuse_remote_code

    refuse_remote_code(directory)
    transformers = _transformers()
    try:
        with quiet_transformers():
            config = transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True,
                                                             trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - transformers raises many types for a broken config
        raise TicketlabError(f"Cannot read the config in {str(directory)!r} ({type(err).__name__}).") from None
    auto = transformers.AutoModelForCausalLM if kind_from_config(config) == "causal" else transformers.AutoModel
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
        model = _vision_model(record, state, repr(str(directory)))
    else:
        model = _hf_model(directory, state)
    if sparse:
        from .execute import sparsify

        if record["kind"] == "vision":
            sparsify_options.setdefault("example", example_batch(record["spec"], 1))
        model = sparsify(model, **sparsify_options)
    return model
