"""Training: configuration, optimisers and schedule, and the masked training loop."""

from .config import OPTIMIZERS, TrainConfig
from .loop import TrainResult, evaluate, iterations_per_epoch, resolve_device, train
from .optim import build_optimizer, learning_rate

__all__ = ["OPTIMIZERS", "TrainConfig", "TrainResult", "build_optimizer", "evaluate",
           "iterations_per_epoch", "learning_rate", "resolve_device", "train"]
