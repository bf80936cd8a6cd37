"""`Experiment`: a validated config bound to its run directory, its data and its device.

IMP, pruning at init / dynamic sparse training and the comparison share this shell: `prepare`
loads the data, lets the subclass check everything that can fail *before* the run directory is
touched (`check`), then claims the directory (refusing another configuration). `run` is theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DataSplits, load_dataset
from ..models import create_model
from ..runs import MetricsLog
from .unit import ProgressFactory, claim_for_process


@dataclass
class Experiment:
    """A config (with ``model``, ``data``, ``data_dir``, ``val_fraction``, ``split_seed`` and
    ``to_json``) bound to a claimed run directory ``out``."""

    config: Any
    out: Path
    data: DataSplits
    device: torch.device
    progress: ProgressFactory | None = None

    @classmethod
    def kind_of(cls, config: Any) -> str:
        """The ``kind`` stored in ``config.json`` (e.g. ``imp``)."""
        raise NotImplementedError

    @classmethod
    def check(cls, config: Any, data: DataSplits) -> None:
        """Raise `TicketlabError` for anything wrong before ``out`` is touched (default: the model
        must build for this data)."""
        create_model(config.model, data.input_shape, data.num_classes, seed=0)

    @classmethod
    def prepare(cls, config: Any, out: str | Path, *, device: torch.device | str = "cpu",
                data: DataSplits | None = None, progress: ProgressFactory | None = None):
        """Load the data (unless given), `check`, then claim ``out`` for this process."""
        data = data or load_dataset(config.data, root=config.data_dir, val_fraction=config.val_fraction,
                                    split_seed=config.split_seed)
        cls.check(config, data)
        claimed = claim_for_process(out, config.to_json(), kind=cls.kind_of(config), device=device)
        return cls(config, Path(claimed), data, torch.device(device), progress)

    @property
    def metrics(self) -> MetricsLog:
        return MetricsLog(self.out / "metrics.jsonl")

    def new_model(self, seed: int) -> nn.Module:
        """The registered model for this data, initialised from ``seed`` (θ0 of that seed)."""
        return create_model(self.config.model, self.data.input_shape, self.data.num_classes, seed=seed)
