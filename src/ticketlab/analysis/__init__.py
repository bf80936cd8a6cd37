"""Analyses that explain tickets: how masks overlap (`overlap`) and when training becomes stable
along a linear path between two copies (`stability`).

They read run directories written by the experiments and never change them; what they compute
goes into files of their own.
"""

from .mask_files import imp_run_overlap, load_mask, resolve_mask_path
from .overlap import MaskOverlap, Overlap, OverlapMatrix, compare_masks, overlap_matrix

__all__ = ["MaskOverlap", "Overlap", "OverlapMatrix", "compare_masks", "imp_run_overlap", "load_mask",
           "overlap_matrix", "resolve_mask_path"]
