"""Lottery tickets: IMP rounds, rewinding (theta_0 or theta_k) and controls (reinit, random, shuffle);
per-round rate schedules, one-shot to a target density and early-bird masks for cheaper tickets."""

from .config import CONTROLS, IMPConfig
from .controls import random_mask_like, shuffled_mask
from .early_bird import EarlyBirdSearch, first_settled, mask_distance
from .imp import IMPExperiment, prune_round, run_imp
from .schedules import base_rates, planned_densities
from .summary import summarize

__all__ = ["CONTROLS", "EarlyBirdSearch", "IMPConfig", "IMPExperiment", "base_rates", "first_settled", "mask_distance",
           "planned_densities", "prune_round", "random_mask_like", "run_imp", "shuffled_mask", "summarize"]
