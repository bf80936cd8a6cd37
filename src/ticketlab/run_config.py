"""What every experiment config shares: model, width, data, data directory, split, seeds, training.

Each experiment config (`IMPConfig`, `PruneInitConfig`, `SparseTrainConfig`, `CompareConfig`)
inherits `RunConfig`, so those fields, their validation and their flags (`ticketlab.flags`) exist
once. (Inheritance rather than a nested ``run=`` field keeps every constructor flat,
``IMPConfig(model=..., rounds=...)``, and every ``config.json`` written by earlier versions valid.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import validate
from .errors import TicketlabError
from .flags import parse_seeds, setting
from .train.config import TrainConfig


def _not_one(value: float) -> bool:
    return value == 1.0


@dataclass(frozen=True)
class RunConfig:
    """Model, data, split, seeds and training recipe: the part every experiment shares.

    ``model`` and ``data`` are registered names (`ticketlab models`, `ticketlab datasets`) or
    ``module:function`` for your own; ``width`` scales the model's hidden widths; ``seeds`` are
    replicate seeds; ``val_fraction`` of the training data is held out by ``split_seed``.
    """

    model: str = setting("lenet300", help="Registered model (see `ticketlab models`) or module:function for your own.",
                         metavar="NAME")
    width: float = setting(1.0, type=float, omit=_not_one,
                           help="Multiplier of the model's hidden widths (units, channels): 0.5 halves LeNet-300-100 "
                                "to 150-50, 2 doubles it.")
    data: str = setting("mnist5k", help="Registered dataset (see `ticketlab datasets`) or module:function for your own.",
                        metavar="NAME")
    data_dir: str | None = setting(None, help="Directory holding MNIST / CIFAR-10 files (for --data mnist|cifar10).")
    seeds: tuple[int, ...] = setting((0,), parse=parse_seeds, shown="1",
                                     help="Replicates: a count (3 = seeds 0,1,2) or a list (0,4).")
    val_fraction: float = setting(0.1, type=float, help="Share of the training data held out for validation.")
    split_seed: int = setting(0, type=int, help="Seed of the train/val/test split.")
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not isinstance(self.model, str) or not self.model:
            raise TicketlabError("--model needs a registered name or module:function.")
        if not isinstance(self.data, str) or not self.data:
            raise TicketlabError("--data needs a registered name or module:function.")
        if not isinstance(self.train, TrainConfig):
            raise TicketlabError("train must be a TrainConfig.")
        validate.run_common(self)


__all__ = ["RunConfig"]
