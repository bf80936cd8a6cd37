"""Early-bird tickets (You et al., ICLR 2020): take round 1's mask during dense training, as soon
as it stops changing, instead of after a full dense training.

At every evaluation of round 0 the mask that round 1 would prune to is drawn from the current
weights (`ticketlab.lottery.imp.prune_round`). The last ``window`` masks are kept (a FIFO; You et
al. use 5); the rule fires once the window is full and the newest mask differs from every earlier
one in the window in fewer than a fraction ε of the positions (the normalised Hamming distance:
differing positions / prunable positions, all layers together). This is the reference code's
comparison (EB-Train's ``cal_dist``: newest against each of the others), which also bounds the
drift across the window, not only between neighbours. The paper's ε is 0.1 on channel masks at
30-70% pruning; two masks that keep a fraction d of the positions differ in at most 2·min(d, 1−d)
of them, so ε must be below that bound to mean anything (`check_epsilon` refuses it otherwise).

`first_settled` and `window_distance` are the rule itself, pure functions of a mask sequence.
`EarlyBirdSearch` applies it during training, as the ``on_evaluation`` callback of
`ticketlab.train.train`, and keeps its state in ``round-00/early_bird.safetensors`` (the window's
masks, every distance, where it fired). It writes that file *before* the trainer writes the
evaluation's checkpoint, so the file is never behind the checkpoint; a resumed run that evaluates
an iteration the file already holds (a kill fell between the two writes) finds the same weights
and gives the stored answer, so an interrupted run ends exactly like an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TicketlabError
from ..files import load_tree, save_tree
from ..masks import Mask

#: The file in round 0's directory that holds the search's state and record.
STORE_NAME = "early_bird.safetensors"
_FORMAT = "ticketlab-early-bird"


def mask_distance(a: Mask, b: Mask) -> float:
    """Normalised Hamming distance: positions where ``a`` and ``b`` differ / all positions (0..1)."""
    return a.differing(b) / a.num_total()


def window_distance(window: Sequence[Mask]) -> float:
    """The largest distance from the newest mask (``window[-1]``) to each earlier one (0 for one mask)."""
    newest = window[-1]
    return max((mask_distance(newest, other) for other in window[:-1]), default=0.0)


def has_settled(window: Sequence[Mask], epsilon: float, size: int) -> bool:
    """True when ``window`` holds ``size`` masks and the newest differs from each other one by < ε."""
    return len(window) == size and window_distance(window) < epsilon


def first_settled(masks: Sequence[Mask], epsilon: float, size: int, eligible: Sequence[bool] | None = None) -> int | None:
    """The index of the mask at which the rule first fires over the sequence ``masks`` (None if never).

    ``eligible[i]`` False forbids firing at mask i (before the rewind point); the window still fills.
    """
    for i in range(len(masks)):
        if (eligible is None or eligible[i]) and has_settled(masks[max(0, i - size + 1): i + 1], epsilon, size):
            return i
    return None


def check_epsilon(epsilon: float, density: float) -> None:
    """Refuse an ε the rule cannot fail: masks of density d differ in at most 2·min(d, 1−d) of the positions."""
    bound = 2 * min(density, 1 - density)
    if epsilon >= bound:
        raise TicketlabError(
            f"--early-bird {epsilon:g} can never fail at round 1's density of {100 * density:.2f}%: two such masks "
            f"differ in at most {100 * bound:.2f}% of the positions; choose a threshold below {bound:.4g}."
        )


@dataclass
class EarlyBirdState:
    """What the search has seen: every drawn iteration with its window distance (None until the
    window is full), the window's iterations and masks, and the iteration it fired at."""

    iterations: list[int] = field(default_factory=list)
    distances: list[float | None] = field(default_factory=list)
    window: list[tuple[int, Mask]] = field(default_factory=list)
    found: int | None = None

    @classmethod
    def load(cls, path: Path) -> "EarlyBirdState":
        """The state stored at ``path`` (an empty one when there is no file yet)."""
        if not path.exists():
            return cls()
        tree = load_tree(path, "early-bird file")
        try:
            if tree["format"] != _FORMAT:
                raise KeyError("format")
            window = [(int(e["iteration"]), Mask(e["mask"])) for e in tree["window"]]
            return cls(list(tree["iterations"]), list(tree["distances"]), window, tree["found"])
        except (KeyError, TypeError, ValueError):
            raise TicketlabError(f"The early-bird file {str(path)!r} is damaged; delete its round-00 directory "
                                 "to retrain round 0.") from None

    def save(self, path: Path) -> None:
        save_tree(path, {"format": _FORMAT, "iterations": self.iterations, "distances": self.distances,
                         "window": [{"iteration": i, "mask": dict(m.items())} for i, m in self.window],
                         "found": self.found})

    @property
    def mask(self) -> Mask | None:
        """The early-bird mask (the newest in the window when the rule fired), or None."""
        return self.window[-1][1] if self.found is not None else None

    def record(self) -> dict[str, Any]:
        """The JSON record a summary shows: where it fired and the distance at every evaluation."""
        return {"stop_iteration": self.found,
                "distances": [[i, d] for i, d in zip(self.iterations, self.distances)]}


@dataclass
class EarlyBirdSearch:
    """The ``on_evaluation(iteration, model) -> stop`` callback that runs the rule during round 0.

    ``draw`` gives round 1's mask for a model's current weights; the rule may fire only at
    iterations after ``after`` (the rewind point: the network is rewound to a point before the
    mask was drawn); once it fired, ``stop`` says whether training stops there (True) or goes on
    to its end (False: round 0 is still the dense reference; no more masks are drawn).
    """

    path: Path
    draw: Callable[[nn.Module], Mask]
    epsilon: float
    size: int
    after: int = 0
    stop: bool = True
    _state: "EarlyBirdState | None" = field(default=None, repr=False)  # read from ``path`` once

    @torch.no_grad()
    def __call__(self, iteration: int, model: nn.Module) -> bool:
        if self._state is None:
            self._state = EarlyBirdState.load(self.path)
        state = self._state
        if state.iterations and iteration <= state.iterations[-1]:
            return self.stop and state.found == iteration  # a resumed run re-evaluates what the file holds
        if state.found is not None:
            return False
        mask = self.draw(model)
        state.window = [*state.window, (iteration, mask)][-self.size:]
        window = [m for _, m in state.window]
        state.iterations.append(iteration)
        state.distances.append(window_distance(window) if len(window) == self.size else None)
        if iteration > self.after and has_settled(window, self.epsilon, self.size):
            state.found = iteration
        state.save(self.path)
        return self.stop and state.found is not None
