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
#: The per-round rate when neither ``rate`` nor ``target_density`` is given (the LTH paper's 20%).
DEFAULT_RATE = 0.2
#: Masks the early-bird rule compares at once: You et al.'s FIFO of 5, and a bound that stops typos.
DEFAULT_EARLY_BIRD_WINDOW, MAX_EARLY_BIRD_WINDOW = 5, 1000


def _check_rate(rate: float, what: str) -> float:
    return validate.fraction(rate, what)


def _resolve_rate(rate: Any, target_density: float | None, rounds: int) -> float | tuple[float, ...] | None:
    """One rate (a float), a per-round schedule (a tuple of two or more), or None with a target density."""
    if target_density is not None:
        if rate is not None:
            raise TicketlabError("Give --rate or --target-density, not both: the target density sets the rate.")
        return None
    if rate is None:
        return DEFAULT_RATE
    if not isinstance(rate, (list, tuple)):
        return _check_rate(rate, "The pruning rate --rate")
    if not rate:
        raise TicketlabError("--rate needs at least one rate.")
    rates = tuple(_check_rate(r, "A pruning rate in --rate") for r in rate)
    if len(rates) > max(1, rounds):
        raise TicketlabError(f"--rate lists {len(rates)} rates for {rounds} pruning round(s); give at most one rate per round.")
    return rates[0] if len(rates) == 1 else rates


@dataclass(frozen=True)
class IMPConfig:
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

    ``rounds`` pruning rounds follow the dense round 0; each prunes ``rate`` of the weights still
    remaining (``layer_rates`` overrides it per parameter pattern; ``"output"`` names the output
    layer). With ``scope="layer"`` and no overrides given, the output layer is pruned at half the
    round's rate, as in the LTH paper's LeNet (20% hidden, 10% output). ``rewind`` is ``0it`` for
    theta_0 or a step for late rewinding. ``seeds`` are replicate seeds; ``controls`` run beside
    every pruned round.

    Cheaper tickets (`ticketlab.lottery.schedules`, `ticketlab.lottery.early_bird`):

    * ``rate`` may be a tuple, one rate per round, the last repeating (``(0.5, 0.5, 0.2)``);
    * ``target_density`` (instead of ``rate``) picks the one constant rate with which ``rounds``
      rounds end at that overall density or just below (``rounds=1``: one-shot with rewinding);
    * ``early_bird`` = ε draws round 1's mask during round 0's training at every evaluation and
      takes it once the last ``early_bird_window`` masks differ from the newest in under a
      fraction ε of the positions (You et al. 2020). Round 0 then stops there if
      ``dense_accuracy`` gives the dense reference; otherwise it trains on to its end to be that
      reference, and only the iterations up to the early-bird point count as the ticket's cost;
    * ``dense_accuracy`` (test accuracy in %, e.g. from another run) replaces round 0's accuracy as
      the reference of the winning-ticket ``tolerance``.
    """

    model: str = "lenet300"
    width: float = 1.0
    data: str = "mnist5k"
    data_dir: str | None = None
    rounds: int = 12
    rate: float | tuple[float, ...] | None = None
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
    target_density: float | None = None
    early_bird: float | None = None
    early_bird_window: int = DEFAULT_EARLY_BIRD_WINDOW
    dense_accuracy: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rewind", Step.parse(self.rewind))
        object.__setattr__(self, "controls", tuple(self.controls))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "ignore", tuple(self.ignore))
        validate.integer(self.rounds, "--rounds", low=0, high=MAX_ROUNDS)
        if self.target_density is not None:
            object.__setattr__(self, "target_density", validate.fraction(self.target_density, "--target-density"))
            if self.rounds < 1:
                raise TicketlabError("--target-density needs at least one pruning round (--rounds 1 is one-shot).")
        object.__setattr__(self, "rate", _resolve_rate(self.rate, self.target_density, self.rounds))
        if self.scope not in IMP_SCOPES:
            raise TicketlabError(f"Unknown scope {self.scope!r}; choose one of {', '.join(IMP_SCOPES)}.")
        if self.layer_rates is None and isinstance(self.rate, float):  # one rate: the default is stored resolved
            default = (("output", self.rate / 2),) if self.scope == "layer" else ()
            object.__setattr__(self, "layer_rates", default)
        if self.layer_rates is not None:
            object.__setattr__(self, "layer_rates", tuple((str(p), float(r)) for p, r in self.layer_rates))
            for pattern, rate in self.layer_rates:
                _check_rate(rate, f"The rate for {pattern!r}")
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
        self._check_early_bird()

    def _check_early_bird(self) -> None:
        if self.dense_accuracy is not None:
            object.__setattr__(self, "dense_accuracy", validate.real(
                self.dense_accuracy, "The dense reference --dense-accuracy", low=0.0, high=100.0))
        if self.early_bird is None:
            if self.early_bird_window != DEFAULT_EARLY_BIRD_WINDOW:
                raise TicketlabError("--early-bird-window applies only with --early-bird.")
            return
        object.__setattr__(self, "early_bird", validate.real(
            self.early_bird, "The early-bird threshold --early-bird", low=0.0, high=1.0, low_open=True, high_open=True))
        validate.integer(self.early_bird_window, "--early-bird-window", low=2, high=MAX_EARLY_BIRD_WINDOW)
        if self.rounds < 1:
            raise TicketlabError("--early-bird draws round 1's mask, so it needs at least one pruning round (--rounds).")

    @property
    def stops_early(self) -> bool:
        """Round 0 stops at the early-bird point (only when the dense reference comes from elsewhere)."""
        return self.early_bird is not None and self.dense_accuracy is not None

    def to_json(self) -> dict[str, Any]:
        """The resolved configuration; the fields of cheaper tickets appear only when used, so a
        run directory of an earlier ticketlab still matches its command."""
        out = {
            "model": self.model, "data": self.data, "data_dir": self.data_dir, "rounds": self.rounds,
            "rate": list(self.rate) if isinstance(self.rate, tuple) else self.rate,
            "layer_rates": None if self.layer_rates is None else [list(p) for p in self.layer_rates],
            "scope": self.scope, "ignore": list(self.ignore), "rewind": str(self.rewind),
            "controls": list(self.controls), "seeds": list(self.seeds), "tolerance": self.tolerance,
            "val_fraction": self.val_fraction, "split_seed": self.split_seed, "train": self.train.to_json(),
        }
        if self.width != 1.0:
            out["width"] = self.width
        if self.target_density is not None:
            out["target_density"] = self.target_density
        if self.early_bird is not None:
            out.update(early_bird=self.early_bird, early_bird_window=self.early_bird_window)
        if self.dense_accuracy is not None:
            out["dense_accuracy"] = self.dense_accuracy
        return out

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "IMPConfig":
        """The config whose `to_json` is ``record`` (a run's ``config.json``), validated again."""
        fields = dict(record)
        fields["train"] = TrainConfig.from_json(fields["train"])
        if fields.get("layer_rates") is not None:
            fields["layer_rates"] = tuple(tuple(pair) for pair in fields["layer_rates"])
        if isinstance(fields.get("rate"), list):
            fields["rate"] = tuple(fields["rate"])
        for name in ("ignore", "controls", "seeds"):
            fields[name] = tuple(fields[name])
        return cls(**fields)
