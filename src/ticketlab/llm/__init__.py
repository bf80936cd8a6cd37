"""One-shot pruning of pretrained transformers and LLMs (magnitude, Wanda, SparseGPT).

``prune_model(model, calibration, OneShotConfig(...))`` prunes any Hugging Face model in place with
one sequential calibration engine (`ticketlab.llm.engine`); families differ only in the adapter
table (`ticketlab.llm.adapters`). ``run_oneshot(OneShotRun(...))`` is the whole job of
``ticketlab llm prune`` — load, calibrate, evaluate, prune, evaluate, write — as one call.
"""

from .adapters import ADAPTERS, Adapter, TargetLayer, context_length, find_blocks, find_targets
from .config import ONE_SHOT_METHODS, OneShotConfig
from .engine import prune_layer, prune_model, relative_reconstruction_error
from .report import PruningReport
from .run import CalibrationConfig, EvaluationConfig, OneShotResult, OneShotRun, run_oneshot

__all__ = [
    "ADAPTERS", "Adapter", "CalibrationConfig", "EvaluationConfig", "ONE_SHOT_METHODS", "OneShotConfig",
    "OneShotResult", "OneShotRun", "PruningReport", "TargetLayer",
    "context_length", "find_blocks", "find_targets", "prune_layer", "prune_model",
    "relative_reconstruction_error", "run_oneshot",
]
