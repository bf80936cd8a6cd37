"""Reading an IMP run directory (written by `ticketlab.lottery.imp`) without changing it.

An analysis needs the run's resolved configuration (to rebuild its model, data and training
recipe), θ0 and θk of a seed, and the mask of a round. Every missing or damaged piece is one
`TicketlabError` sentence that names the file, raised before the analysis writes anything; so is a
file that is not a regular file or that resolves (through a link) outside the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import DataSplits, load_dataset
from ..errors import TicketlabError
from ..files import read_json
from ..lottery import IMPConfig
from ..masks import Mask
from ..train import iterations_per_epoch
from ..units import TRAINERS, load_state


@dataclass(frozen=True)
class ImpRun:
    """An IMP run directory ``path`` and its resolved ``config``."""

    path: Path
    config: IMPConfig

    @classmethod
    def open(cls, path: str | Path) -> "ImpRun":
        """Read ``path/config.json``; refuse anything that is not an IMP run directory."""
        path = Path(path)
        if not path.is_dir():
            raise TicketlabError(f"The run directory {str(path)!r} does not exist.")
        record = read_json(path / "config.json", root=path, finite=True) if (path / "config.json").is_file() else None
        if not (isinstance(record, dict) and record.get("kind") == "imp" and isinstance(record.get("config"), dict)):
            raise TicketlabError(f"{str(path)!r} is not an IMP run directory (its config.json is missing or of "
                                 "another kind).")
        try:
            config = IMPConfig.from_json(record["config"])
        except (KeyError, TypeError) as err:
            raise TicketlabError(f"{str(path / 'config.json')!r} is damaged ({err}).") from None
        return cls(path, config)

    def check_seed(self, seed: int) -> None:
        if seed not in self.config.seeds:
            raise TicketlabError(f"The run has no seed {seed}; its seeds are {', '.join(map(str, self.config.seeds))}.")

    def seed_dir(self, seed: int) -> Path:
        return self.path / f"seed-{seed}"

    def mask_path(self, seed: int, round_index: int) -> Path:
        return self.seed_dir(seed) / f"round-{round_index:02d}" / "mask.safetensors"

    def mask(self, seed: int, round_index: int) -> Mask:
        """The mask round ``round_index`` of ``seed`` trained (round 0: all ones, dense)."""
        if not 0 <= round_index <= self.config.rounds:
            raise TicketlabError(f"The run has no round {round_index}; its rounds are 0 to {self.config.rounds}.")
        path = self.mask_path(seed, round_index)
        if not path.is_file():
            raise TicketlabError(f"Round {round_index} of seed {seed} has not started yet ({str(path)!r} is missing).")
        return Mask.load(path, root=self.path)

    def init_state(self, seed: int) -> dict[str, torch.Tensor]:
        """θ0 of ``seed`` (the whole state dict)."""
        path = self.seed_dir(seed) / "init.safetensors"
        if not path.is_file():
            raise TicketlabError(f"The run holds no initial weights for seed {seed} ({str(path)!r} is missing).")
        return load_state(path, root=self.path)

    def rewind_state(self, seed: int) -> dict[str, torch.Tensor]:
        """θk of ``seed`` at the run's own rewind point (θ0 when the run rewinds to the start)."""
        if self.config.rewind.count == 0:
            return self.init_state(seed)
        path = self.seed_dir(seed) / "rewind.safetensors"
        if not path.is_file():
            raise TicketlabError(f"The run holds no rewind weights for seed {seed} ({str(path)!r} is missing; "
                                 "round 0 saves them when it reaches the rewind point).")
        return load_state(path, root=self.path)

    def round_trainer(self, seed: int, round_index: int) -> str | None:
        """Which code path trained round ``round_index``'s ticket of ``seed`` (``trainer`` in its
        ``result.json``: `ticketlab.units.SINGLE` or `STACKED`); None for a round not finished yet or
        a run written before ticketlab recorded it."""
        path = self.seed_dir(seed) / f"round-{round_index:02d}" / "result.json"
        if not path.is_file():
            return None
        record = read_json(path, root=self.path, finite=True)
        trainer = record.get("trainer") if isinstance(record, dict) else None
        if trainer is not None and trainer not in TRAINERS:
            raise TicketlabError(f"{str(path)!r} names an unknown trainer {trainer!r}.")
        return trainer

    def load_data(self) -> DataSplits:
        """The run's data, split exactly as the run split it."""
        cfg = self.config
        return load_dataset(cfg.data, root=cfg.data_dir, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed)

    def iterations_per_epoch(self, data: DataSplits) -> int:
        return iterations_per_epoch(data, self.config.train.batch_size)
