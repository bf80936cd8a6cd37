"""The registry of dynamic sparse training updaters (`ticketlab.methods.dynamic.MaskUpdater`
subclasses): adding one is one module plus one line in `UPDATERS` (and its name in
`ticketlab.methods.dynamic.DST_METHODS`, which configurations are validated against; a test keeps
the two equal). Kept apart from `dynamic.py` so that the base class never imports its subclasses.
"""

from __future__ import annotations

from .dynamic import DSTConfig, MaskUpdater
from .rigl import RigL
from .set import SET

UPDATERS: dict[str, type[MaskUpdater]] = {"rigl": RigL, "set": SET}


def make_updater(config: DSTConfig, *, seed: int) -> MaskUpdater:
    """The updater named by ``config.method`` (``seed`` drives SET's random growth)."""
    return UPDATERS[config.method](config, seed=seed)


__all__ = ["UPDATERS", "make_updater"]
