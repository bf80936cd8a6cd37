"""Training hyperparameters as a frozen, validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import validate
from ..errors import TicketlabError
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

    optimizer: str = "adam"
    lr: float = 1.2e-3
    batch_size: int = 60
    steps: Step = Step(10, "ep")
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    warmup: Step = Step(0, "it")
    lr_drops: tuple[Step, ...] = field(default_factory=tuple)
    lr_gamma: float = 0.1
    eval_every: Step | None = None

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
        object.__setattr__(self, "lr", validate.real(self.lr, "The learning rate --lr", low=0.0, low_open=True))
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

    @classmethod
    def from_json(cls, record: dict) -> "TrainConfig":
        """The config whose `to_json` is ``record``, validated again."""
        return cls(**{**record, "lr_drops": tuple(record.get("lr_drops", ()))})

    def to_json(self) -> dict:
        return {
            "optimizer": self.optimizer, "lr": self.lr, "batch_size": self.batch_size,
            "steps": str(self.steps), "momentum": self.momentum, "nesterov": self.nesterov,
            "weight_decay": self.weight_decay, "warmup": str(self.warmup),
            "lr_drops": [str(s) for s in self.lr_drops], "lr_gamma": self.lr_gamma,
            "eval_every": None if self.eval_every is None else str(self.eval_every),
        }
