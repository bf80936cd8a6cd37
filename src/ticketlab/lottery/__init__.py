"""Lottery tickets: IMP rounds, rewinding (theta_0 or theta_k) and controls (reinit, random, shuffle)."""

from .config import CONTROLS, IMPConfig
from .controls import random_mask_like, shuffled_mask
from .imp import IMPExperiment, prune_round, run_imp
from .summary import summarize

__all__ = ["CONTROLS", "IMPConfig", "IMPExperiment", "prune_round", "random_mask_like", "run_imp",
           "shuffled_mask", "summarize"]
