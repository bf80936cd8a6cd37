"""Configuration of an IMP experiment, frozen and validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import validate
from ..errors import TicketlabError
from ..steps import Step
from ..train.config import TrainConfig

CONTROLS: tuple[str, ...] = ("reinit", "random", "shuffle")
IMP_SCOPES: tuple[str, ...] = ("layer", "global")
#: The most pruning rounds one experiment may ask for (at rate 0.2, 1000 rounds keep 1e-97 of the weights).
MAX_ROUNDS = 1000


def _check_rate(rate: float, what: str) -> None:
    validate.fraction(rate, what)


@dataclass(frozen=True)
class IMPConfig:
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

    ``rounds`` pruning rounds follow the dense round 0; each prunes ``rate`` of the weights still
    remaining (``layer_rates`` overrides it per parameter pattern; ``"output"`` names the output
    layer). With ``scope="layer"`` and no overrides given, the output layer is pruned at half the
    rate, as in the LTH paper's LeNet (20% hidden, 10% output). ``rewind`` is ``0it`` for theta_0 or
    a step for late rewinding. ``seeds`` are replicate seeds; ``controls`` run beside every
    pruned round.
    """

    model: str = "lenet300"
    data: str = "mnist5k"
    data_dir: str | None = None
    rounds: int = 12
    rate: float = 0.2
    layer_rates: tuple[tuple[str, float], ...] | None = None
    scope: str = "layer"
    ignore: tuple[str, ...] = ()
    rewind: Step = Step(0, "it")
    controls: tuple[str, ...] = ("reinit",)
    seeds: tuple[int, ...] = (0,)
    tolerance: float = 0.5
    val_fraction: float = 0.1
    split_seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rewind", Step.parse(self.rewind))
        object.__setattr__(self, "controls", tuple(self.controls))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "ignore", tuple(self.ignore))
        _check_rate(self.rate, "The pruning rate --rate")
        if self.scope not in IMP_SCOPES:
            raise TicketlabError(f"Unknown scope {self.scope!r}; choose one of {', '.join(IMP_SCOPES)}.")
        if self.layer_rates is None:
            default = (("output", self.rate / 2),) if self.scope == "layer" else ()
            object.__setattr__(self, "layer_rates", default)
        object.__setattr__(self, "layer_rates", tuple((str(p), float(r)) for p, r in self.layer_rates))
        for pattern, rate in self.layer_rates:
            _check_rate(rate, f"The rate for {pattern!r}")
        validate.integer(self.rounds, "--rounds", low=0, high=MAX_ROUNDS)
        unknown = [c for c in self.controls if c not in CONTROLS]
        if unknown:
            raise TicketlabError(f"Unknown control {unknown[0]!r}; choose from {', '.join(CONTROLS)}.")
        if len(set(self.controls)) != len(self.controls):
            raise TicketlabError("A control is listed twice in --controls.")
        validate.run_common(self)
        validate.real(self.tolerance, "The winning-ticket --tolerance", low=0.0, high=100.0)
        budget = self.train.steps
        if self.rewind.count and budget.unit == self.rewind.unit and self.rewind.count >= budget.count:
            raise TicketlabError(f"The rewind step {self.rewind} is not before the end of the training budget {budget}.")

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "data": self.data, "data_dir": self.data_dir, "rounds": self.rounds,
            "rate": self.rate, "layer_rates": [list(p) for p in self.layer_rates], "scope": self.scope,
            "ignore": list(self.ignore), "rewind": str(self.rewind), "controls": list(self.controls),
            "seeds": list(self.seeds), "tolerance": self.tolerance, "val_fraction": self.val_fraction,
            "split_seed": self.split_seed, "train": self.train.to_json(),
        }
