"""Experiments built from one shared unit of work (`train_unit`) and one aggregation (`aggregate`).

`lottery/` (IMP) uses them too; this package adds pruning at initialisation and dynamic sparse
training (`sparse.py`) and the side-by-side comparison of every method (`compare.py`).
"""

from .aggregate import aggregate
from .base import Experiment
from .unit import ProgressFactory, claim_for_process, load_state, save_state, train_unit

__all__ = ["Experiment", "ProgressFactory", "aggregate", "claim_for_process", "load_state", "save_state", "train_unit"]

# sparse.py and compare.py import the lottery package, which imports this one: import them by
# module path (ticketlab.experiments.sparse, ticketlab.experiments.compare).
