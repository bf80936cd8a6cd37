"""`PruningReport`: what one-shot pruning did, layer by layer, and what it cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any



@dataclass
class PruningReport:
    """Result of `ticketlab.llm.prune_model`.

    Attributes:
        method, sparsity, pattern: the request (``sparsity`` is the fraction pruned per layer,
            ``1 - N/M`` for a pattern).
        layers: one dict per pruned layer, in model order, with ``name`` (module), ``parameter``,
            ``block``, ``shape`` (the parameter's), ``sparsity`` (fraction of the weight exactly
            zero after pruning), ``reconstruction_error`` (``‖WX − ŴX‖² / ‖WX‖²`` over the layer's
            calibration inputs X, i.e. the inputs it received with every earlier block already
            pruned; computed exactly from ``Σ x xᵀ``) and ``seconds`` (the pruning arithmetic for
            that layer: selection and, for SparseGPT, the reconstruction — forward passes excluded).
        wall_time: seconds for the whole call (capture, forward passes, pruning).
        peak_memory_bytes: on CPU the process's peak resident set size (``VmHWM``, `ticketlab.memory`; a process-
            lifetime peak, so it includes whatever ran before); on CUDA the peak of
            ``torch.cuda.max_memory_allocated`` during the call. ``peak_memory_source`` says which.
        nsamples, seqlen: calibration shape; blocks: dotted path of the block list; device.
        masks: parameter name -> kept (bool), in each parameter's own orientation (a `Mask`, or for a
            streamed model its bit-packed equivalent `ticketlab.llm.packed_masks.PackedMasks`).
    """

    method: str
    sparsity: float
    pattern: str | None
    layers: list[dict[str, Any]]
    wall_time: float
    peak_memory_bytes: int
    masks: Any
    peak_memory_source: str = "cpu_peak_rss"
    nsamples: int = 0
    seqlen: int = 0
    blocks: str = ""
    device: str = "cpu"
    model_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def overall_sparsity(self) -> float:
        """Fraction of zero weights over all pruned layers together."""
        total = sum(int(_prod(layer["shape"])) for layer in self.layers)
        zeros = sum(layer["sparsity"] * _prod(layer["shape"]) for layer in self.layers)
        return zeros / total if total else 0.0

    @property
    def mean_reconstruction_error(self) -> float:
        errors = [layer["reconstruction_error"] for layer in self.layers]
        return sum(errors) / len(errors) if errors else 0.0

    def to_json(self) -> dict[str, Any]:
        """Everything but the masks, as JSON-serialisable values."""
        return {
            "method": self.method,
            "sparsity": self.sparsity,
            "pattern": self.pattern,
            "model_type": self.model_type,
            "blocks": self.blocks,
            "device": self.device,
            "nsamples": self.nsamples,
            "seqlen": self.seqlen,
            "num_layers": len(self.layers),
            "overall_sparsity": self.overall_sparsity,
            "mean_reconstruction_error": self.mean_reconstruction_error,
            "wall_time": self.wall_time,
            "peak_memory_bytes": self.peak_memory_bytes,
            "peak_memory_source": self.peak_memory_source,
            "layers": [dict(layer) for layer in self.layers],
            **({"extra": dict(self.extra)} if self.extra else {}),
        }


def _prod(shape: list[int]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


__all__ = ["PruningReport"]
