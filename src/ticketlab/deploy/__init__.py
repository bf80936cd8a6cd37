"""What users take home: compact files, compacted networks, sparse execution, and `bench`.

* `export` writes a run's ticket or a pruned Hugging Face model as a directory that rebuilds it
  (`format`: bitmask / N:M encodings, lossless; `compact`: dead units removed);
* `load` reads such a directory back into a ready model, by default through `sparsify`, which runs
  each pruned layer with the fastest backend measured on this machine (`execute`, `kernels`);
* `bench` times dense against deployed execution.
"""

from .compact import CompactionReport, compact_model
from .execute import execution_plan, sparsify
from .export import export
from .load import load

__all__ = ["CompactionReport", "compact_model", "execution_plan", "export", "load", "sparsify"]
