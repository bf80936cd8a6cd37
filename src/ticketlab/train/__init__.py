"""Training: configuration, optimisers and schedule, the masked training loop (with optional mask
updates for dynamic sparse training) and the process-group helpers for running it under torchrun."""

from . import distributed
from .config import OPTIMIZERS, TrainConfig
from .distributed import barrier, is_main_process, rank, world_size
from ..devices import resolve_device
from .evaluation import TrainResult, evaluate
from .loop import train
from .schedule import epoch_order, iterations_per_epoch
from .optim import build_optimizer, learning_rate

__all__ = ["OPTIMIZERS", "TrainConfig", "TrainResult", "barrier", "build_optimizer", "distributed", "epoch_order", "evaluate",
           "is_main_process", "iterations_per_epoch", "learning_rate", "rank", "resolve_device", "train",
           "world_size"]
