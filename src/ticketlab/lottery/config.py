"""Configuration of an IMP experiment, frozen and validated on construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import validate
from ..errors import TicketlabError
from ..flags import config_json, floats_parser, is_none, names_parser, setting
from ..run_config import RunConfig
from ..steps import Step
from ..structure.granularity import HELP as GRANULARITY_HELP
from ..structure.granularity import Granularity, is_unstructured
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
            raise TicketlabError("Give --rate or --density, not both: the target density sets the rate.")
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


def parse_layer_rates(items: Any) -> tuple[tuple[str, float], ...] | None:
    """``("output=0.1", "fc1=0.3")`` -> ``(("output", 0.1), ("fc1", 0.3))``; nothing given -> None.

    ``items`` are the texts of the repeated flag (or of a recipe's tuple); a run's config.json
    gives pairs straight to `IMPConfig`, not through here."""
    if not items:
        return None
    out = []
    for item in items:
        pattern, sep, value = str(item).rpartition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = None
        if not sep or not pattern or rate is None:
            raise TicketlabError(f"Cannot read --layer-rate {item!r}: write PATTERN=RATE, e.g. output=0.1.")
        out.append((pattern, rate))
    return tuple(out)


@dataclass(frozen=True)
class IMPConfig(RunConfig):
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

    rounds: int = setting(12, type=int, help="Pruning rounds after the dense round 0.")
    rate: float | tuple[float, ...] | None = setting(
        None, parse=floats_parser("--rate"),
        help="Fraction of the remaining weights pruned per round  [default: 0.2]; a comma list gives one rate per "
             "round, the last repeating (0.5,0.5,0.2).")
    layer_rates: tuple[tuple[str, float], ...] | None = setting(
        None, name="--layer-rate", multiple=True, parse=parse_layer_rates, metavar="PATTERN=RATE",
        help="Per-layer rate (exact name, suffix, regex, or 'output'); repeatable. Default with --scope layer: "
             "output at half the round's rate, as in the LTH paper.")
    scope: str = setting("layer", choices=lambda: IMP_SCOPES,
                         help="Rank weights within each layer (the LTH paper's LeNet and Conv recipes) or across all "
                              "layers (its deep networks).")
    granularity: Granularity = setting(Granularity(), parse=Granularity.parse, shown="unstructured",
                                       omit=is_unstructured,
                                       help=f"{GRANULARITY_HELP} A round prunes --rate of the remaining groups.")
    ignore: tuple[str, ...] = setting((), multiple=True, parse=tuple, metavar="PATTERN",
                                      help="Parameters never pruned; repeatable.")
    rewind: Step = setting(Step(0, "it"), shown="0",
                           help="Rewind point: 0 for theta_0, or a step such as 500it / 1ep (late rewinding).")
    controls: tuple[str, ...] = setting(("reinit",), parse=names_parser("--controls"),
                                        help="Comma list of controls: reinit, random, shuffle; or 'none'.")
    tolerance: float = setting(0.5, type=float,
                               help="A round is a winning ticket if its test accuracy is within this many points of dense.")
    target_density: float | None = setting(
        None, name="--density", type=float, omit=is_none,
        help="Instead of --rate: the one constant rate with which --rounds rounds end at this fraction of the weights "
             "or just below (--rounds 1: one-shot pruning with rewinding).")
    early_bird: float | None = setting(
        None, type=float, metavar="EPS", omit=is_none,
        help="Early-bird ticket: draw round 1's mask at every evaluation of round 0 and take it once the last "
             "--early-bird-window masks differ from the newest in under a fraction EPS of the weights. Round 0 stops "
             "there if --dense-accuracy is given; otherwise it trains on to be the dense reference (its extra "
             "iterations are not counted in the ticket's cost).")
    early_bird_window: int = setting(DEFAULT_EARLY_BIRD_WINDOW, type=int, help="Masks compared by --early-bird.")
    dense_accuracy: float | None = setting(
        None, type=float, omit=is_none,
        help="The dense network's test accuracy (in %, e.g. from another run): the reference of --tolerance instead "
             "of round 0's.")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "rewind", Step.parse(self.rewind))
        object.__setattr__(self, "controls", tuple(self.controls))
        object.__setattr__(self, "ignore", tuple(self.ignore))
        validate.integer(self.rounds, "--rounds", low=0, high=MAX_ROUNDS)
        if self.target_density is not None:
            object.__setattr__(self, "target_density", validate.fraction(self.target_density, "--density"))
            if self.rounds < 1:
                raise TicketlabError("--density needs at least one pruning round (--rounds 1 is one-shot).")
        object.__setattr__(self, "rate", _resolve_rate(self.rate, self.target_density, self.rounds))
        if self.scope not in IMP_SCOPES:
            raise TicketlabError(f"Unknown scope {self.scope!r}; choose one of {', '.join(IMP_SCOPES)}.")
        object.__setattr__(self, "granularity", Granularity.parse(self.granularity))
        if self.granularity.kind == "nm":
            raise TicketlabError(f"--granularity {self.granularity} fixes the density at {self.granularity.n}/"
                                 f"{self.granularity.m}, so IMP cannot prune it a fraction per round; use prune-init "
                                 "--granularity N:M, or blocks or channels here.")
        if self.layer_rates is None and isinstance(self.rate, float):  # one rate: the default is stored resolved
            # the output layer's half rate; at channel granularity its units are the classes, never pruned
            halved = self.scope == "layer" and not self.granularity.coupled
            default = (("output", self.rate / 2),) if halved else ()
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
        return config_json(self, leave_out=("early_bird_window",) if self.early_bird is None else ())

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "IMPConfig":
        """The config whose `to_json` is ``record`` (a run's ``config.json``), validated again."""
        fields = dict(record)
        fields["train"] = TrainConfig.from_json(fields["train"])
        if fields.get("layer_rates") is not None:
            fields["layer_rates"] = tuple(tuple(pair) for pair in fields["layer_rates"])
        if isinstance(fields.get("rate"), list):
            fields["rate"] = tuple(fields["rate"])
        if "granularity" in fields:
            fields["granularity"] = Granularity.parse(fields["granularity"])
        for name in ("ignore", "controls", "seeds"):
            fields[name] = tuple(fields[name])
        return cls(**fields)
