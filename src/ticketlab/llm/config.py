"""`OneShotConfig`: what one-shot (post-training, calibrated) pruning of a transformer should do.

A frozen, validated dataclass: every field a user can get wrong is checked in ``__post_init__`` and
rejected with one sentence (`TicketlabError`), so the engine never starts a long calibration run
with a contradictory request. The command line maps its flags one-to-one onto these fields.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import validate
from ..errors import TicketlabError
from ..flags import setting, split_list
from ..methods.oneshot import ONE_SHOT_METHODS as _REGISTRY
from ..select import NMPattern
from ..structure.granularity import HELP as GRANULARITY_HELP
from ..structure.granularity import Granularity, is_unstructured
from .structured import RECONSTRUCTIONS

#: The one-shot methods the engine knows (the registry `ticketlab.methods.oneshot.ONE_SHOT_METHODS`).
ONE_SHOT_METHODS: tuple[str, ...] = tuple(_REGISTRY)
MAGNITUDE_SCOPES: tuple[str, ...] = ("layer", "row")
LAYER_SPARSITIES: tuple[str, ...] = ("uniform", "owl")


def _patterns_parser(flag: str) -> Callable[[Any], tuple[str, ...]]:
    """A parser of the repeated ``flag`` (``--targets`` / ``--exclude``), each value a comma list,
    into one tuple of patterns. A value with no pattern (``''``, ``','``) or an empty item
    (``'q_proj,'``) is refused: ``--targets ''`` must not mean every layer."""
    def parse(values: Any) -> tuple[str, ...]:
        if isinstance(values, str):
            values = (values,)
        out: list[str] = []
        for value in values:
            parts = split_list(value, flag)
            if not parts:
                raise TicketlabError(f"{flag} {str(value)!r} names no pattern; give a module name, suffix or regex.")
            out += parts
        return tuple(out)
    return parse


@dataclass(frozen=True)
class OneShotConfig:
    """One-shot pruning request.

    Attributes:
        method: ``"magnitude"`` (|W|), ``"wanda"`` (|W|·‖X_j‖₂, per output row) or ``"sparsegpt"``
            (blocked OBS reconstruction with an fp32 Hessian).
        sparsity: fraction of each target layer's weights set to zero, in (0, 1). With ``pattern``
            it may be given only if it equals ``1 - N/M``.
        pattern: ``"N:M"`` — keep N of every M consecutive weights along the input dimension.
        targets: exact module names, dotted suffixes (``"q_proj"``, ``"mlp.down_proj"``) or regular
            expressions (full match) of the Linear / GPT-2 Conv1D modules inside the repeated blocks
            to prune; ``()`` means every one of them. A trailing ``".weight"`` is ignored.
        exclude: patterns (same syntax) of modules to leave dense.
        magnitude_scope: comparison group for magnitude pruning: ``"layer"`` or ``"row"``.
        blocksize: SparseGPT's column block (mask chosen per block, lazy batch updates between blocks).
        percdamp: SparseGPT's dampening, as a fraction of the mean diagonal of the Hessian.
        layer_sparsity: ``"uniform"`` (every block at ``sparsity``) or ``"owl"`` (outlier-weighted
            per-block sparsities with the same parameter-weighted mean; `ticketlab.llm.owl`).
        owl_threshold, owl_lambda: OWL's outlier threshold M (a score is an outlier above M × the
            block's mean score) and spread λ (block sparsities span [S − λ, S + λ] before centring).
    """

    method: str = setting(choices=lambda: ONE_SHOT_METHODS,
                          help=f"One-shot method (required): {', '.join(ONE_SHOT_METHODS)}.")
    sparsity: float | None = setting(None, type=float, help="Fraction of each target layer's weights to zero, e.g. 0.5.")
    pattern: str | None = setting(None, metavar="N:M", help="Semi-structured pattern, e.g. 2:4 or 4:8.")
    targets: tuple[str, ...] = setting(default_factory=tuple, multiple=True, metavar="PATTERNS",
                                       parse=_patterns_parser("--targets"),
                                       help="Modules to prune (exact name, suffix or regex; comma list, repeatable). "
                                            "Default: every linear layer in the blocks.")
    exclude: tuple[str, ...] = setting(default_factory=tuple, multiple=True, metavar="PATTERNS",
                                       parse=_patterns_parser("--exclude"),
                                       help="Modules to leave dense (same syntax).")
    magnitude_scope: str = setting("layer", choices=lambda: MAGNITUDE_SCOPES,
                                   help="Comparison group of magnitude pruning.")
    blocksize: int = setting(128, type=int, help="SparseGPT column block size.")
    percdamp: float = setting(0.01, type=float, help="SparseGPT dampening (fraction of mean diag H).")
    layer_sparsity: str = setting("uniform", choices=lambda: LAYER_SPARSITIES,
                                  help="Every block at --sparsity, or OWL's outlier-weighted block sparsities "
                                       "(same mean).")
    owl_threshold: float = setting(5.0, type=float,
                                   help="OWL: a score is an outlier above this many times its block's mean score (M).")
    owl_lambda: float = setting(0.08, type=float,
                                help="OWL: block sparsities span [S - lambda, S + lambda] before centring.")
    granularity: Granularity = setting(Granularity(), parse=Granularity.parse, shown="unstructured",
                                       omit=is_unstructured,
                                       help=f"{GRANULARITY_HELP} N:M is --pattern; channel / head remove MLP channels "
                                            "and attention heads (grouped-query: a key/value head with its query "
                                            "heads), --sparsity of them per block.")
    reconstruct: str = setting("lsq", choices=lambda: RECONSTRUCTIONS, omit=lambda value: value == "lsq",
                               help="With --granularity channel / head: refit the layer reading the removed heads "
                                    "or channels (o_proj, down_proj) by least squares on the calibration inputs "
                                    "(lsq), or keep its weights (none).")

    def __post_init__(self) -> None:
        # Lists from a CLI or JSON config are accepted and frozen into tuples.
        for field in ("targets", "exclude"):
            value = getattr(self, field)
            if isinstance(value, str):
                value = (value,)
            if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) and v for v in value):
                raise TicketlabError(f"OneShotConfig.{field} must be a sequence of non-empty strings.")
            object.__setattr__(self, field, tuple(value))
        if self.method not in ONE_SHOT_METHODS:
            raise TicketlabError(
                f"Unknown one-shot pruning method {self.method!r}; choose one of {', '.join(ONE_SHOT_METHODS)}."
            )
        self._resolve_granularity()
        if self.sparsity is None and self.pattern is None:
            raise TicketlabError("Give either a sparsity (e.g. 0.5) or an N:M pattern (e.g. 2:4) to prune to.")
        if self.sparsity is not None:
            if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
                raise TicketlabError(f"The sparsity must be a number in (0, 1), got {self.sparsity!r}.")
            if not (math.isfinite(self.sparsity) and 0.0 < self.sparsity < 1.0):
                raise TicketlabError(f"The sparsity must lie strictly between 0 and 1, got {self.sparsity}.")
            object.__setattr__(self, "sparsity", float(self.sparsity))
        if self.pattern is not None:
            if not isinstance(self.pattern, str):
                raise TicketlabError(f"The pattern must be written as N:M, e.g. 2:4 (got {self.pattern!r}).")
            nm = NMPattern.parse(self.pattern)  # raises for N >= M or bad text
            object.__setattr__(self, "pattern", f"{nm.n}:{nm.m}")
            if self.sparsity is not None and abs(self.sparsity - (1.0 - nm.density)) > 1e-9:
                raise TicketlabError(
                    f"Sparsity {self.sparsity} contradicts pattern {nm.n}:{nm.m}, which prunes {1.0 - nm.density:g} of the weights."
                )
        if self.magnitude_scope not in MAGNITUDE_SCOPES:
            raise TicketlabError(
                f"Unknown magnitude scope {self.magnitude_scope!r}; choose one of {', '.join(MAGNITUDE_SCOPES)}."
            )
        if isinstance(self.blocksize, bool) or not isinstance(self.blocksize, int) or self.blocksize < 1:
            raise TicketlabError(f"The SparseGPT block size must be a positive integer, got {self.blocksize!r}.")
        nm = self.nm_pattern
        if nm is not None and self.method == "sparsegpt" and self.blocksize % nm.m:
            raise TicketlabError(
                f"The SparseGPT block size {self.blocksize} must be a multiple of M={nm.m} for an {nm.n}:{nm.m} pattern."
            )
        if (isinstance(self.percdamp, bool) or not isinstance(self.percdamp, (int, float))
                or not math.isfinite(self.percdamp) or self.percdamp < 0):
            raise TicketlabError(f"The SparseGPT dampening must be a non-negative number, got {self.percdamp!r}.")
        object.__setattr__(self, "percdamp", float(self.percdamp))
        if self.layer_sparsity not in LAYER_SPARSITIES:
            raise TicketlabError(f"Unknown --layer-sparsity {self.layer_sparsity!r}; choose one of {', '.join(LAYER_SPARSITIES)}.")
        if self.layer_sparsity == "owl" and self.pattern is not None:
            raise TicketlabError("OWL sets layer-wise sparsities, which an N:M pattern fixes: give --sparsity instead.")
        object.__setattr__(self, "owl_threshold", validate.real(self.owl_threshold, "--owl-threshold", low=0.0,
                                                                 low_open=True, high=1e6))
        object.__setattr__(self, "owl_lambda", validate.real(self.owl_lambda, "--owl-lambda", low=0.0, high=0.5,
                                                              high_open=True))

    def _resolve_granularity(self) -> None:
        """``--granularity N:M`` is ``--pattern N:M``; coarse groups take a sparsity, a method that
        chooses (not reconstructs) single weights, and a known reconstruction."""
        granularity = Granularity.parse(self.granularity)
        object.__setattr__(self, "granularity", granularity)
        if granularity.kind == "nm":
            if self.pattern is not None and NMPattern.parse(str(self.pattern)) != granularity.pattern:
                raise TicketlabError(f"--pattern {self.pattern} contradicts --granularity {granularity}; give one.")
            object.__setattr__(self, "pattern", str(granularity))
        if self.reconstruct not in RECONSTRUCTIONS:
            raise TicketlabError(f"Unknown --reconstruct {self.reconstruct!r}; choose one of {', '.join(RECONSTRUCTIONS)}.")
        if not granularity.grouped:
            return
        if self.pattern is not None:
            raise TicketlabError(f"--granularity {granularity} and an N:M --pattern are two granularities; give one.")
        if self.method == "sparsegpt":
            raise TicketlabError(f"sparsegpt reconstructs single weights inside its column sweep, so it cannot take "
                                 f"--granularity {granularity}; use wanda or magnitude (with --reconstruct lsq the "
                                 "reading layer is refit on the calibration inputs).")
        if self.sparsity is None:
            raise TicketlabError(f"--granularity {granularity} needs --sparsity (the fraction of each block's "
                                 "groups, and so of their weights, to remove).")

    @property
    def structured(self) -> bool:
        """Whole groups (blocks, heads, MLP channels) rather than single weights or N:M."""
        return self.granularity.grouped

    @property
    def nm_pattern(self) -> NMPattern | None:
        """The parsed N:M pattern, or None for unstructured sparsity."""
        return NMPattern.parse(self.pattern) if self.pattern is not None else None

    @property
    def target_sparsity(self) -> float:
        """Fraction of each target layer that ends up zero (``1 - N/M`` for a pattern)."""
        nm = self.nm_pattern
        return 1.0 - nm.density if nm is not None else float(self.sparsity)  # type: ignore[arg-type]

    def describe(self) -> str:
        """Short human label, e.g. ``"wanda 2:4"``, ``"sparsegpt 50%"`` or ``"wanda 70% (OWL)"``."""
        if self.pattern:
            return f"{self.method} {self.pattern}"
        return f"{self.method} {self.sparsity:.0%}{self._what()}" + (" (OWL)" if self.layer_sparsity == "owl" else "")

    def _what(self) -> str:
        granularity = self.granularity
        if granularity.kind == "block":
            return f" in {granularity.rows}x{granularity.cols} blocks"
        names = {"channel": "MLP channels", "head": "heads"}
        return " of " + " and ".join(names[u] for u in granularity.units) if granularity.coupled else ""
