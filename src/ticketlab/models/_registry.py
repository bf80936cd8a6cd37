"""The model registry itself: name -> (description, builder), plus the input checks builders share.

Kept apart from ``__init__`` so the family modules (``mlp``, ``conv``, ``resnet``, ``vgg``) can
import `register_model` without a circular import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import torch
from torch import nn

from ..errors import TicketlabError, first_line
from ..user_code import call_user_function, import_user_function, is_user_code

#: A builder takes ``(input_shape, num_classes)`` — and ``width=`` when a width multiplier other
#: than 1 is asked for — and returns a freshly initialised module. It draws its random numbers from
#: torch's global CPU generator; `create_model` seeds and isolates that.
Builder = Callable[..., nn.Module]
#: The widest multiplier accepted (×64 LeNet is 19,200-6,400 wide: far beyond any use here).
MAX_WIDTH = 64.0
B = TypeVar("B", bound=Builder)

# torch.Generator.manual_seed accepts exactly this range (negative seeds are wrapped around).
_SEED_MIN, _SEED_MAX = -(1 << 63), (1 << 64) - 1


@dataclass(frozen=True)
class ModelInfo:
    """A registered model's name (what ``--model`` takes) and a one-line description."""

    name: str
    description: str


_REGISTRY: dict[str, tuple[ModelInfo, Builder]] = {}


def register_model(name: str, description: str) -> Callable[[B], B]:
    """Decorator registering ``builder(input_shape, num_classes) -> nn.Module`` under ``name``.

    The builder is returned unchanged. Builders must validate ``input_shape`` themselves (raising
    `TicketlabError` with one sentence) and must honour the models contract described in
    `ticketlab.models`. Names are case-insensitive and must be unique.
    """
    key = name.strip().lower()
    if not key:
        raise TicketlabError("A model name must not be empty.")

    def decorator(builder: B) -> B:
        if key in _REGISTRY:
            raise TicketlabError(f"A model named {key!r} is already registered.")
        _REGISTRY[key] = (ModelInfo(key, description), builder)
        return builder

    return decorator


def list_models() -> list[ModelInfo]:
    """Every registered model, in registration order."""
    return [info for info, _ in _REGISTRY.values()]


def create_model(name: str, input_shape: Sequence[int], num_classes: int, *, seed: int,
                 width: float = 1.0) -> nn.Module:
    """Build model ``name`` for inputs of shape ``input_shape`` (one example, no batch dimension).

    The returned module maps a float32 batch ``(N, *input_shape)`` to logits ``(N, num_classes)``
    and carries ``input_shape`` and ``num_classes`` attributes. Its initial parameters depend only
    on ``seed``: the same seed gives bit-identical parameters, on any call order, because the
    build runs on a forked CPU RNG seeded with ``seed`` and the caller's RNG state (CPU and
    accelerators alike) is left exactly as it was. ``name`` may also be ``module:function``, user
    code the command line has allowed (`trust_user_code`): ``function(input_shape, num_classes)``
    builds the module, under the same seeding, and is checked like a registered model's output
    (docs/CUSTOM.md). ``width`` multiplies every hidden width
    (units, channels; the input and the classes stay) — `scaled_width` rounds. Raises
    `TicketlabError` for an unknown name, bad ``num_classes``/``seed``/``width``, or an input shape
    the model cannot take.
    """
    key = str(name).strip().lower()
    if key not in _REGISTRY and not is_user_code(name):
        raise TicketlabError(f"Unknown model {name!r}; known models: {', '.join(_REGISTRY)}.")
    shape = _check_shape(input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise TicketlabError(f"The number of classes must be an integer of at least 2, not {num_classes!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or not _SEED_MIN <= seed <= _SEED_MAX:
        raise TicketlabError(f"The model seed must be an integer between -2**63 and 2**64-1, not {seed!r}.")
    width = check_width(width)
    user, spec = is_user_code(name), str(name).strip()
    builder = _user_builder(spec, width) if user else _REGISTRY[key][1]
    # devices=[]: only the CPU state is saved and restored, and only the CPU generator is seeded
    # (torch.manual_seed would also reseed, and thereby disturb, every CUDA generator).
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        model = builder(shape, num_classes) if width == 1.0 else builder(shape, num_classes, width=width)
    if user:
        _check_user_model(model, spec, shape, num_classes)
    model.input_shape = shape
    model.num_classes = num_classes
    model.width = width
    return model


def check_width(width: float) -> float:
    """A width multiplier: a finite number in (0, `MAX_WIDTH`], or a TicketlabError."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= MAX_WIDTH:
        raise TicketlabError(f"The width multiplier --width must be a number above 0 and at most {MAX_WIDTH:g}, "
                             f"not {width!r}.")
    return float(width)


def scaled_width(base: int, width: float) -> int:
    """``base`` hidden units or channels at multiplier ``width``: rounded half up, at least 1
    (LeNet-300-100 at ×0.25 is 75-25, at ×2 600-200)."""
    return max(1, int(base * width + 0.5))


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if (not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape)):
        raise TicketlabError(f"An input shape must be a non-empty tuple of positive integers, not {input_shape!r}.")
    return shape


# --- user code: --model module:function (the import rules live in `ticketlab.user_code`) ----------

#: The (spec, input shape, classes) whose network passed `_check_user_model` in this process: a
#: run builds one network per seed, density and control, and the check's forward pass need not
#: be repeated for each (a prune-init run with 2 seeds x 2 densities did 29 before).
_CHECKED: set[tuple[str, tuple[int, ...], int]] = set()


def _user_builder(spec: str, width: float) -> Builder:
    """The builder of ``--model module:function``: the user's function (imported now, so a spec
    this command line did not trust is refused on every call), its errors turned into one sentence
    (`call_user_function`). A width other than 1 is refused: user code builds its own widths."""
    if width != 1.0:
        raise TicketlabError(f"--width scales the registered models only; {spec} builds its own widths, "
                             "so leave --width at 1.")
    function = import_user_function(spec, "--model")
    return lambda shape, num_classes: call_user_function(function, spec, shape, num_classes)


def _check_user_model(model: Any, spec: str, shape: tuple[int, ...], num_classes: int) -> None:
    """One sentence unless the user's ``model`` is an ``nn.Module`` that keeps the contract pruning
    relies on: an ``nn.Linear`` classifier, ``(2, *shape)`` mapped to ``(2, num_classes)`` logits.
    The forward pass runs once per (spec, shape, classes) in this process (`_CHECKED`)."""
    if not isinstance(model, nn.Module):
        raise TicketlabError(f"--model {spec} returned a {type(model).__name__}, not a torch.nn.Module.")
    key = (spec, shape, num_classes)
    if key not in _CHECKED:
        _check_contract(model, spec, shape, num_classes)
        _CHECKED.add(key)


@torch.no_grad()
def _check_contract(model: nn.Module, spec: str, shape: tuple[int, ...], num_classes: int) -> None:
    """One sentence unless ``model`` keeps the contract pruning relies on (`ticketlab.models`)."""
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise TicketlabError(f"--model {spec} returned a network without an nn.Linear layer; ticketlab needs one "
                             "as the classifier (the last nn.Linear).")
    batch = torch.zeros((2, *shape))
    was_training = model.training
    model.eval()
    try:
        out = model(batch)
    except Exception as err:  # noqa: BLE001 - user code
        raise TicketlabError(f"--model {spec}'s network fails on a batch of shape {tuple(batch.shape)} "
                             f"({type(err).__name__}: {first_line(err)}).") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TicketlabError(f"--model {spec}'s network maps a batch of shape {tuple(batch.shape)} to {got}, "
                             f"not to logits of shape {(2, num_classes)}.")


# --- helpers for builders ---------------------------------------------------------------------

def num_features(input_shape: tuple[int, ...]) -> int:
    """The length of one flattened input: ``prod(input_shape)``."""
    return math.prod(input_shape)


def image_shape(model: str, input_shape: tuple[int, ...], min_size: int) -> tuple[int, int, int]:
    """``input_shape`` as ``(channels, height, width)``, or a TicketlabError naming ``model``.

    ``min_size`` is the smallest height/width the model's downsampling leaves non-empty (e.g.
    ``2 ** pools`` for a stack of 2x2 max-pools).
    """
    if len(input_shape) != 3 or min(input_shape[1:]) < min_size:
        raise TicketlabError(
            f"{model} needs image inputs of shape (channels, height, width) with height and width at "
            f"least {min_size}; this dataset's inputs have shape {tuple(input_shape)}."
        )
    c, h, w = input_shape
    return c, h, w


def glorot_init_(model: nn.Module) -> nn.Module:
    """Gaussian Glorot (``xavier_normal_``) weights and zero biases for every Linear/Conv2d."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def kaiming_bn_init_(model: nn.Module) -> nn.Module:
    """OpenLTH's init for BN nets: Kaiming normal (fan-in, ReLU gain) weights for every Linear and
    Conv2d, zero biases, BatchNorm scale 1 and shift 0."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
