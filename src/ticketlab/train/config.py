"""Training hyperparameters as a frozen, validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import TicketlabError
from ..steps import Step

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")


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
        if not self.lr > 0:
            raise TicketlabError(f"The learning rate must be positive (got {self.lr}).")
        if self.batch_size < 1:
            raise TicketlabError(f"The batch size must be at least 1 (got {self.batch_size}).")
        if self.steps.count < 1:
            raise TicketlabError("The training budget --steps must be at least one iteration.")
        if not 0 <= self.momentum < 1:
            raise TicketlabError(f"Momentum must be in [0, 1) (got {self.momentum}).")
        if self.momentum and self.optimizer != "sgd":
            raise TicketlabError("--momentum applies to --optimizer sgd only (Adam has its own betas).")
        if self.nesterov and not (self.optimizer == "sgd" and self.momentum > 0):
            raise TicketlabError("Nesterov needs --optimizer sgd with a positive --momentum.")
        if self.weight_decay < 0:
            raise TicketlabError(f"Weight decay cannot be negative (got {self.weight_decay}).")
        if not 0 < self.lr_gamma <= 1:
            raise TicketlabError(f"--lr-gamma must be in (0, 1] (got {self.lr_gamma}).")

    def to_json(self) -> dict:
        return {
            "optimizer": self.optimizer, "lr": self.lr, "batch_size": self.batch_size,
            "steps": str(self.steps), "momentum": self.momentum, "nesterov": self.nesterov,
            "weight_decay": self.weight_decay, "warmup": str(self.warmup),
            "lr_drops": [str(s) for s in self.lr_drops], "lr_gamma": self.lr_gamma,
            "eval_every": None if self.eval_every is None else str(self.eval_every),
        }
