"""The unit of work every experiment shares: train one masked network from given weights, once
(`train_unit`), many at once (`train_units`, stacking those that can train together), a run
directory around units (`Experiment`), and their aggregation (`aggregate`).

Below both experiment families: `ticketlab.lottery` (IMP) and `ticketlab.experiments` (pruning at
initialisation, dynamic sparse training, the side-by-side comparison) import this package, and it
imports neither.
"""

from .aggregate import aggregate, aggregate_units
from .base import Experiment
from .group import StackSetting, UnitJob, group_size, train_units
from .workers import WorkerSetting
from .unit import (SINGLE, STACKED, TRAINERS, ProgressFactory, claim_for_process, load_state, read_result, save_state,
                   train_unit)

__all__ = ["SINGLE", "STACKED", "TRAINERS", "Experiment", "ProgressFactory", "StackSetting", "UnitJob", "aggregate",
           "aggregate_units",
           "claim_for_process", "group_size", "load_state", "read_result", "save_state", "train_unit", "train_units", "WorkerSetting"]
