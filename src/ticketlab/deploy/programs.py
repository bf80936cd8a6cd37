"""Portable programs of one compacted module: ONNX (checked with onnxruntime) and torch.export.

`ticketlab export --format onnx | pt` writes the network `export` has already compacted (a vision
ticket's smaller dense network, a transformer with its heads and MLP channels removed) as a program
that runs without ticketlab:

* ``model.onnx`` — `torch.onnx.export` with the torch.export-based ("dynamo") exporter, which needs
  ``onnxscript``. The legacy TorchScript exporter was tried and rejected: it cannot export
  transformers 5's masks (``aten::diff`` has no ONNX symbolic in opset 20), and on a model whose
  forward pass branches on tensor values it silently records one branch, where torch.export
  refuses. Inputs: ``x`` ``(N, *input_shape)`` for vision (dynamic batch); ``input_ids`` (and
  ``attention_mask`` for encoders) ``(N, T)`` with dynamic batch and sequence for transformers,
  which give causal LMs' ``logits`` ``(N, T, vocab)`` (no KV cache) and encoders'
  ``last_hidden_state`` ``(N, T, hidden)``.
* ``model.pt2`` — `torch.export.export` with the same inputs and dynamic dimensions, saved by
  `torch.export.save`; load it with ``torch.export.load("model.pt2").module()``.

Before the directory is renamed into place every program is run on seeded examples of two other
shapes (batch 1 and 3; for transformers also two sequence lengths, and padding for encoders) and
compared with the *masked* PyTorch model, the network before compaction: the largest difference
relative to the largest output must be at most `ONNX_TOLERANCE` (onnxruntime's kernels sum in
another order than torch's; float32 rounding leaves ~1e-6 on these models, a removed channel that
mattered would leave ~1e-1) or `PROGRAM_TOLERANCE` (the same torch kernels; compaction's folded
biases round differently, ~1e-7). A module torch.export cannot trace (a branch on a tensor's
value, an unsupported operator) is one sentence, and nothing is written.

Safety: `torch.export.load` unpickles parts of the archive (``torch.load`` with its weights-only guard
off, for tensor subclasses and constants), so a crafted ``.pt2`` file runs code when loaded. ticketlab
therefore loads a ``.pt2`` only right after writing it, in its own temporary directory, to check
it; `ticketlab.deploy.load` and ``bench`` read an export's ``weights.safetensors`` instead and never
open ``model.pt2``. Load one yourself only if you trust where it came from. ``.onnx`` files are
protocol buffers, which onnxruntime parses without running code.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import io
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TicketlabError, first_line

#: Largest relative difference (max |a - b| / max |a|) accepted between onnxruntime's outputs and
#: the masked PyTorch model's.
ONNX_TOLERANCE = 1e-4
#: The same for a torch.export program (the same kernels as the model itself).
PROGRAM_TOLERANCE = 1e-5
ONNX_FILE, PROGRAM_FILE = "model.onnx", "model.pt2"
#: Above this many bytes of weights the ONNX file keeps them beside it (``model.onnx.data``):
#: a protocol buffer cannot exceed 2 GiB.
EXTERNAL_DATA_BYTES = 1 << 30
#: The largest batch a program accepts (torch.export needs a bound to reason about shapes).
MAX_BATCH = 1 << 16


class CausalLogits(nn.Module):
    """A causal LM as ``input_ids (N, T) -> logits (N, T, vocab)``, without the KV cache (the
    shape a program can express: one forward pass over the whole sequence)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


class EncoderStates(nn.Module):
    """An encoder as ``(input_ids, attention_mask) (N, T) -> last_hidden_state (N, T, hidden)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@dataclass
class Signature:
    """What a program takes and gives: input ``names``, the ``trace`` example (batch 2, so that
    torch.export does not specialise the batch to 1), the ``checks`` it must then reproduce
    (other shapes: the dimensions really are dynamic), per input its dynamic dimensions, and the
    output's name."""

    names: tuple[str, ...]
    trace: tuple[torch.Tensor, ...]
    checks: list[tuple[torch.Tensor, ...]]
    dynamic: tuple[dict[int, Any], ...]
    output: str

    def to_json(self) -> dict[str, Any]:
        return {"inputs": {name: {"dtype": str(t.dtype).removeprefix("torch."),
                                  "dynamic": {str(dim): d.__name__ for dim, d in axes.items()},
                                  "example_shape": list(t.shape)}
                           for name, t, axes in zip(self.names, self.trace, self.dynamic)},
                "output": self.output, "checked_shapes": [[list(t.shape) for t in c] for c in self.checks]}


def portable(kind: str, model: nn.Module, input_shape: Sequence[int] | None = None) -> tuple[nn.Module, Signature]:
    """The module a program is made of and its `Signature`: a vision network as it is (inputs of
    ``input_shape`` after the batch), a causal LM as `CausalLogits`, an encoder as
    `EncoderStates` (``kind``: the export record's kind)."""
    if kind == "vision":
        if input_shape is None:
            raise TicketlabError("A vision program needs the model's input shape.")
        return model, _vision_signature(tuple(input_shape))
    from ..llm.io import kind_from_config

    causal = kind_from_config(model.config) == "causal"
    module = CausalLogits(model) if causal else EncoderStates(model)
    return module.eval(), _token_signature(model, causal)


def _vision_signature(shape: tuple[int, ...]) -> Signature:
    generator = torch.Generator().manual_seed(0)

    def batch(n: int) -> tuple[torch.Tensor, ...]:
        return (torch.randn(n, *shape, generator=generator),)

    return Signature(("x",), batch(2), [batch(1), batch(3)],
                     ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},), "logits")


def _token_signature(model: nn.Module, causal: bool) -> Signature:
    from ..llm.adapters import context_length

    context = context_length(model) or 512
    vocab = int(model.config.vocab_size)
    generator = torch.Generator().manual_seed(0)
    lengths = [min(8, context), min(5, context), min(11, context)]

    def inputs(n: int, t: int, padded: bool) -> tuple[torch.Tensor, ...]:
        ids = torch.randint(0, vocab, (n, t), generator=generator)
        if causal:
            return (ids,)
        mask = torch.ones(n, t, dtype=torch.int64)
        if padded and t > 2:
            mask[0, t - 2:] = 0                 # the first sequence ends two tokens early
        return ids, mask

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    axes: dict[int, Any] = {0: batch}
    if context > lengths[0]:
        axes[1] = torch.export.Dim("sequence", min=1, max=context)
    names = ("input_ids",) if causal else ("input_ids", "attention_mask")
    return Signature(names, inputs(2, lengths[0], False), [inputs(1, lengths[1], True), inputs(3, lengths[2], True)],
                     tuple(dict(axes) for _ in names), "logits" if causal else "last_hidden_state")


# --- quiet, one-sentence failures --------------------------------------------------------------------
_NOISY_LOGGERS = ("torch.onnx", "torch._dynamo", "torch.export", "torch._export", "torch.fx",
                  "torch._subclasses", "onnxscript")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' prints, warnings and log lines inside the block (restored after)."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    sink = io.StringIO()
    try:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _cause(err: BaseException) -> str:
    """The innermost reason an exporter gives, as a short clause."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = first_line(err).strip().rstrip(".")
    if "data-dependent" in text or "GuardOnDataDependent" in type(err).__name__:
        return ("its forward pass depends on the values in its input (for example an if on a tensor), "
                "which a program cannot record")
    return f"{type(err).__name__}: {text[:200]}"


def _require(module: str, purpose: str) -> Any:
    """Import an optional package of the ``onnx`` extra, or one sentence naming the install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TicketlabError(f"{purpose} needs the {module} package, which is not installed; run "
                             "pip install 'ticketlab[onnx]'.") from None


def onnx_available() -> str | None:
    """None when ONNX programs can be written and run here, else why not (the missing package)."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'ticketlab[onnx]')"
    return None


def relative_difference(reference: torch.Tensor, other: torch.Tensor) -> float:
    """max |a - b| / max |a| (the absolute difference when ``reference`` is all zero)."""
    scale = float(reference.abs().max())
    diff = float((reference.float() - other.float()).abs().max())
    return diff / scale if scale > 0 else diff


def _compare(reference: Callable[..., torch.Tensor], run: Callable[..., torch.Tensor], signature: Signature,
             what: str, tolerance: float) -> float:
    """The worst relative difference between ``run`` and ``reference`` over the check inputs; one
    sentence when a shape or the tolerance is off."""
    worst = 0.0
    for example in signature.checks:
        with torch.no_grad():
            want = reference(*example)
        got = run(*example)
        if tuple(got.shape) != tuple(want.shape):
            raise TicketlabError(f"The {what} gives outputs of shape {tuple(got.shape)} where the model gives "
                                 f"{tuple(want.shape)}; nothing was written.")
        worst = max(worst, relative_difference(want, got))
    if not worst <= tolerance:
        raise TicketlabError(f"The {what}'s outputs differ from the masked model's by {worst:.2e} (relative; at "
                             f"most {tolerance:g} is accepted); nothing was written.")
    return worst


def sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _weight_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


# --- ONNX ----------------------------------------------------------------------------------------------
def write_onnx(module: nn.Module, signature: Signature, path: Path) -> None:
    """``module`` as an ONNX file at ``path`` (the dynamo exporter; weights beside it, in
    ``path.data``, above `EXTERNAL_DATA_BYTES`); a module it cannot export is one sentence."""
    _require("onnxscript", "--format onnx")
    _require("onnx", "--format onnx")
    external = _weight_bytes(module) > EXTERNAL_DATA_BYTES
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(module, signature.trace, str(path), dynamo=True, input_names=list(signature.names),
                              output_names=[signature.output], dynamic_shapes=signature.dynamic, optimize=True,
                              external_data=external, report=False, verbose=False)
    except TicketlabError:
        raise
    except Exception as err:  # noqa: BLE001 - the exporters raise many types; the cause is the sentence
        raise TicketlabError(f"This model cannot be exported to ONNX: {_cause(err)}; nothing was written "
                             "(--format compact exports it for ticketlab.deploy.load).") from None
    if not path.is_file():
        raise TicketlabError("The ONNX exporter wrote no file; nothing was written.")


def onnx_session(path: Path, threads: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Any:
    """An onnxruntime session of ``path`` (all graph optimisations; ``threads`` intra-op threads,
    one inter-op thread, sequential execution, as torch runs one operator at a time)."""
    ort = _require("onnxruntime", "Running an ONNX program")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))


def onnx_runner(session: Any, names: Sequence[str]) -> Callable[..., torch.Tensor]:
    """``session`` as a function of torch tensors (CPU) returning its first output as a tensor."""
    def run(*inputs: torch.Tensor) -> torch.Tensor:
        feeds = {name: t.detach().cpu().numpy() for name, t in zip(names, inputs)}
        return torch.from_numpy(session.run(None, feeds)[0])
    return run


def check_onnx(path: Path, reference: Callable[..., torch.Tensor], signature: Signature) -> dict[str, Any]:
    """Run ``path`` with onnxruntime on the signature's check inputs against ``reference`` (the
    masked model); returns the check record, one sentence beyond `ONNX_TOLERANCE`."""
    ort = _require("onnxruntime", "--format onnx (its outputs are checked with onnxruntime)")
    try:
        session = onnx_session(path)
    except Exception as err:  # noqa: BLE001 - onnxruntime refuses a graph with its own types
        raise TicketlabError(f"onnxruntime cannot run the exported program ({first_line(err)[:200]}); nothing "
                             "was written.") from None
    worst = _compare(reference, onnx_runner(session, signature.names), signature, "ONNX program", ONNX_TOLERANCE)
    return {"runtime": f"onnxruntime {ort.__version__} (CPUExecutionProvider)", "max_relative_difference": worst,
            "tolerance": ONNX_TOLERANCE}


# --- torch.export ------------------------------------------------------------------------------------
def write_program(module: nn.Module, signature: Signature, path: Path,
                  reference: Callable[..., torch.Tensor]) -> dict[str, Any]:
    """``module`` exported by `torch.export.export` and saved at ``path``, then loaded back from
    that file (ticketlab's own, just written) and checked against ``reference``; returns the check
    record. A module torch.export cannot trace is one sentence."""
    try:
        with _quiet():
            program = torch.export.export(module, signature.trace, dynamic_shapes=signature.dynamic, strict=False)
            torch.export.save(program, str(path))
            reloaded = torch.export.load(str(path)).module()
    except Exception as err:  # noqa: BLE001 - torch.export raises many types; the cause is the sentence
        raise TicketlabError(f"This model cannot be exported with torch.export: {_cause(err)}; nothing was "
                             "written (--format compact exports it for ticketlab.deploy.load).") from None

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return reloaded(*inputs)

    worst = _compare(reference, run, signature, "torch.export program", PROGRAM_TOLERANCE)
    return {"runtime": f"torch {torch.__version__}", "max_relative_difference": worst, "tolerance": PROGRAM_TOLERANCE}


__all__ = ["CausalLogits", "EncoderStates", "ONNX_TOLERANCE", "PROGRAM_TOLERANCE", "Signature", "check_onnx",
           "onnx_available", "onnx_runner", "onnx_session", "portable", "relative_difference", "write_onnx",
           "write_program"]
