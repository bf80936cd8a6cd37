"""Experiment runners above the lottery package: pruning at initialisation and dynamic sparse
training (`sparse.py`, with mask scoring in `scoring.py`) and the side-by-side comparison of every
method, IMP included (`compare.py`). The shared unit of work lives in `ticketlab.units`.

Import the runners by module path (``ticketlab.experiments.sparse``, ``ticketlab.experiments.compare``).
"""
