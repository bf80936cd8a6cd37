"""Training hyperparameters as a frozen, validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from .. import validate
from ..data.augment import AUGMENTATIONS, check_augment
from ..errors import TicketlabError
from ..flags import config_json, items_parser, setting
from ..steps import Step

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")
#: The largest batch size accepted (far beyond any dataset here; it only stops typos).
MAX_BATCH = 2**20


@dataclass(frozen=True)
class TrainConfig:
    """How one network is trained.

    ``steps`` is the budget, ``warmup`` a linear learning-rate warm-up, ``lr_drops`` the steps at
    which the learning rate is multiplied by ``lr_gamma``. ``eval_every`` defaults to a twentieth
    of the budget. All step fields accept step strings (``"500it"``, ``"2ep"``).
    """

    optimizer: str = setting("adam", choices=lambda: OPTIMIZERS, help="Optimizer.")
    lr: float = setting(1.2e-3, type=float, help="Learning rate.")
    batch_size: int = setting(60, type=int, help="Examples per step.")
    steps: Step = setting(Step(10, "ep"), help="Training budget with its unit: iterations (500it) or epochs (2ep).")
    momentum: float = setting(0.0, type=float, help="SGD momentum.")
    nesterov: bool = setting(False, is_flag=True, help="Nesterov momentum (SGD).")
    weight_decay: float = setting(0.0, type=float, help="L2 weight decay.")
    warmup: Step = setting(Step(0, "it"), help="Linear learning-rate warm-up (a step such as 500it).")
    lr_drops: tuple[Step, ...] = setting(default_factory=tuple, parse=items_parser("--lr-drops"), shown="",
                                         help="Comma list of steps where the LR is multiplied by --lr-gamma.")
    lr_gamma: float = setting(0.1, type=float, help="Factor of each --lr-drops step.")
    eval_every: Step | None = setting(None, help="Evaluation interval (a step); default: 20 evaluations per run.")
    augment: str = setting("none", choices=lambda: ("auto", *AUGMENTATIONS), shown="auto",
                           omit=lambda value: value == "none",
                           help="Data augmentation of the training batches: crop-flip (pad 4, random crop, "
                                "horizontal flip), none, or auto (crop-flip for cifar10, none otherwise).")

    def __post_init__(self) -> None:
        for name in ("steps", "warmup"):
            object.__setattr__(self, name, Step.parse(getattr(self, name)))
        object.__setattr__(self, "lr_drops", tuple(Step.parse(s) for s in self.lr_drops))
        if self.eval_every is not None:
            object.__setattr__(self, "eval_every", Step.parse(self.eval_every))
            if self.eval_every.count == 0:
                raise TicketlabError("--eval-every must be positive.")
        if self.optimizer not in OPTIMIZERS:
            raise TicketlabError(f"Unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")
        object.__setattr__(self, "lr", validate.learning_rate(self.lr, "The learning rate --lr"))
        validate.integer(self.batch_size, "The batch size --batch-size", low=1, high=MAX_BATCH)
        if self.steps.count < 1:
            raise TicketlabError("The training budget --steps must be at least one iteration.")
        object.__setattr__(self, "momentum", validate.real(self.momentum, "Momentum --momentum", low=0.0, high=1.0,
                                                           high_open=True))
        if self.momentum and self.optimizer != "sgd":
            raise TicketlabError("--momentum applies to --optimizer sgd only (Adam has its own betas).")
        if self.nesterov and not (self.optimizer == "sgd" and self.momentum > 0):
            raise TicketlabError("Nesterov needs --optimizer sgd with a positive --momentum.")
        object.__setattr__(self, "weight_decay", validate.real(self.weight_decay, "Weight decay --weight-decay",
                                                               low=0.0))
        object.__setattr__(self, "lr_gamma", validate.fraction(self.lr_gamma, "--lr-gamma", closed_high=True))
        check_augment(self.augment)  # "auto" is resolved where the data is known (resolve_augment)
        self._check_schedule()

    def _check_schedule(self) -> None:
        """What can be told of the warm-up and the LR drops before the data is known (an epoch is at
        least one iteration): each drop before the end of the budget and after the one before it,
        the warm-up not beyond the budget. `check_budget` tells the rest once it is known."""
        for drop in self.lr_drops:
            if drop.surely_not_before(self.steps):
                raise TicketlabError(f"The learning-rate drop {drop} in --lr-drops is not before the end of the "
                                     f"training budget --steps {self.steps}.")
        for i, earlier in enumerate(self.lr_drops):
            later = next((d for d in self.lr_drops[i + 1:] if earlier.surely_not_before(d)), None)
            if later is not None:
                raise TicketlabError(f"--lr-drops must list its steps in increasing order, each once "
                                     f"({earlier} is listed before {later} but is not earlier).")
        if self.warmup.surely_after(self.steps):
            raise TicketlabError(f"The warm-up --warmup {self.warmup} is beyond the training budget --steps "
                                 f"{self.steps}.")

    def check_budget(self, iterations_per_epoch: int) -> None:
        """The warm-up and the LR drops against the budget in iterations, once the data and batch
        size give ``iterations_per_epoch``: each drop before the end and after the one before it,
        the warm-up not beyond the end (the check a training command makes beside its rewind
        point's, before its run directory is touched)."""
        total = self.steps.iterations(iterations_per_epoch)
        drops = [(d, d.iterations(iterations_per_epoch)) for d in self.lr_drops]
        for drop, at in drops:
            if at >= total:
                raise TicketlabError(f"The learning-rate drop {drop} in --lr-drops ({at} iterations) is not before "
                                     f"the end of the training budget --steps {self.steps} ({total} iterations).")
        for (earlier, a), (later, b) in zip(drops, drops[1:]):
            if a >= b:
                raise TicketlabError(f"--lr-drops must list its steps in increasing order, each once ({earlier} "
                                     f"is {a} iterations, the next one, {later}, is {b}).")
        warmup = self.warmup.iterations(iterations_per_epoch)
        if warmup > total:
            raise TicketlabError(f"The warm-up --warmup {self.warmup} ({warmup} iterations) is beyond the training "
                                 f"budget --steps {self.steps} ({total} iterations).")

    @classmethod
    def from_json(cls, record: dict) -> "TrainConfig":
        """The config whose `to_json` is ``record``, validated again."""
        return cls(**{**record, "lr_drops": tuple(record.get("lr_drops", ()))})

    def to_json(self) -> dict:
        return config_json(self)
