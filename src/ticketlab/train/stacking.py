"""N networks of one architecture as one module whose every parameter has a leading network axis.

`stack_networks` turns N models built by the registry (same architecture, their own weights) into
a `StackedNetwork`: each parameter and buffer becomes one tensor ``(N, *shape)`` under the same
name, so masks, optimisers and checkpoints address it as they address one network's, and one
forward / backward / optimiser step serves all N. Activations travel in two layouts:

* **stacked** ``(N, B, features)`` for fully connected layers: a Linear is one batched matrix
  product (``baddbmm``) over the N networks;
* **grouped** ``(B, N·C, H, W)`` for images: the N networks' channels side by side, so a Conv2d is
  one grouped convolution (``groups = N·g``) and BatchNorm, ReLU, pooling and residual additions,
  all per channel, work unchanged.

The network's input is ``(N, B, *input_shape)``; a model whose first layer is a Conv2d gets it in
the grouped layout, a Flatten switches grouped images to stacked features. The result is
``(N, B, classes)``. Only the module types the registered models use are converted (Linear,
Conv2d, BatchNorm2d; Flatten; ReLU, pooling, Identity and containers pass through); anything else
is a `StackingUnsupported`, and callers then train the networks one at a time.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TicketlabError

#: Parameter-free modules that act per channel / per element and so work on either layout.
_PASS_THROUGH = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity)


class StackingUnsupported(TicketlabError):
    """The model holds a module `stack_networks` cannot stack (train its networks one at a time)."""


class _Prefix:
    """``active``: how many leading networks a forward pass computes (None: all). The others keep
    their slots in every tensor — and so their place in the optimiser's elementwise kernels — but
    cost no compute and receive zero gradients (`ticketlab.train.stacked` pads with one)."""

    active: int | None = None

    def part(self, tensor: Tensor | None) -> Tensor | None:
        return tensor if tensor is None or self.active is None else tensor[: self.active]


class StackedLinear(_Prefix, nn.Module):
    """N Linear layers: ``weight (N, out, in)``, ``bias (N, out)``; ``(N, B, in) -> (N, B, out)``."""

    def __init__(self, layers: Sequence[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))
        has_bias = layers[0].bias is not None
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers])) if has_bias else None

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.part(self.weight), self.part(self.bias)
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


class StackedConv2d(_Prefix, nn.Module):
    """N Conv2d layers as one grouped convolution: ``weight (N, out, in/g, kh, kw)``, ``bias (N, out)``;
    ``(B, N·in, H, W) -> (B, N·out, H', W')``."""

    def __init__(self, layers: Sequence[nn.Conv2d]):
        super().__init__()
        first = layers[0]
        if first.padding_mode != "zeros":
            raise StackingUnsupported(f"Cannot stack a Conv2d with padding mode {first.padding_mode!r}.")
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers])) if first.bias is not None else None
        self.stride, self.padding, self.dilation, self.groups = first.stride, first.padding, first.dilation, first.groups

    def forward(self, x: Tensor) -> Tensor:
        stacked, stacked_bias = self.part(self.weight), self.part(self.bias)
        weight = stacked.reshape(-1, *stacked.shape[2:])
        bias = stacked_bias.reshape(-1) if stacked_bias is not None else None
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups * stacked.shape[0])


class StackedBatchNorm2d(_Prefix, nn.Module):
    """N BatchNorm2d layers over the grouped layout: affine parameters and running statistics
    ``(N, C)``, batch counters ``(N,)``; the statistics of network n are those of its own channels."""

    def __init__(self, layers: Sequence[nn.BatchNorm2d]):
        super().__init__()
        first = layers[0]
        self.eps, self.momentum = first.eps, first.momentum
        self.track_running_stats = first.track_running_stats
        self.weight = nn.Parameter(torch.stack([l.weight.detach() for l in layers])) if first.affine else None
        self.bias = nn.Parameter(torch.stack([l.bias.detach() for l in layers])) if first.affine else None
        if first.track_running_stats:
            self.register_buffer("running_mean", torch.stack([l.running_mean for l in layers]))
            self.register_buffer("running_var", torch.stack([l.running_var for l in layers]))
            self.register_buffer("num_batches_tracked", torch.stack([l.num_batches_tracked for l in layers]))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x: Tensor) -> Tensor:
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.part(self.num_batches_tracked).add_(1)
            if self.momentum is None:  # cumulative moving average, the same count in every network
                factor = 1.0 / float(self.num_batches_tracked[0])
        use_batch = self.training or not self.track_running_stats
        flat = (lambda t: self.part(t).view(-1) if t is not None else None)
        return F.batch_norm(x, flat(self.running_mean), flat(self.running_var), flat(self.weight), flat(self.bias),
                            use_batch, factor, self.eps)


class StackedFlatten(_Prefix, nn.Module):
    """Flatten each network's example: stacked ``(N, B, *shape) -> (N, B, prod)``, or grouped images
    ``(B, N·C, H, W) -> (N, B, C·H·W)`` (the order one network's Flatten gives)."""

    def __init__(self, networks: int, grouped: bool):
        super().__init__()
        self.networks, self.grouped = networks, grouped

    def forward(self, x: Tensor) -> Tensor:
        if not self.grouped:
            return x.flatten(2)
        networks = self.networks if self.active is None else self.active
        return x.reshape(x.shape[0], networks, -1).transpose(0, 1)


class StackedNetwork(nn.Module):
    """The N networks as one module: ``forward((N, B, *input_shape)) -> (N, B, classes)``.

    Parameters and buffers carry the original names with shapes ``(N, *shape)``; `network_state`
    and `load_network_states` move between that and one state dict per network.
    """

    def __init__(self, body: nn.Module, networks: int, grouped_input: bool):
        super().__init__()
        self.body, self.networks, self.grouped_input = body, networks, grouped_input

    def forward(self, x: Tensor) -> Tensor:
        if self.grouped_input:     # (N, B, C, H, W) -> (B, N·C, H, W)
            x = x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:])
        return self.body(x)

    def compute_only(self, active: int | None) -> None:
        """Let forward passes compute the first ``active`` networks only (None: all of them)."""
        for module in self.body.modules():
            if isinstance(module, _Prefix):
                module.active = active

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """The body's parameters under the per-network names (no ``body.`` prefix)."""
        return self.body.named_parameters(prefix=prefix, recurse=recurse, remove_duplicate=remove_duplicate)

    def stacked_state(self) -> dict[str, Tensor]:
        """Parameter / buffer name -> the stacked tensor ``(N, *shape)`` (the live tensors)."""
        return dict(self.body.state_dict(keep_vars=True))

    def network_state(self, index: int) -> dict[str, Tensor]:
        """Network ``index``'s state dict (CPU copies), as its own model's ``state_dict()`` names and shapes."""
        return {name: value.detach()[index].clone().cpu() for name, value in self.body.state_dict().items()}

    @torch.no_grad()
    def load_network_states(self, states: Sequence[Mapping[str, Tensor]]) -> None:
        """Copy one state dict per network into the stacked tensors."""
        if len(states) != self.networks:
            raise TicketlabError(f"{len(states)} network states were given for {self.networks} stacked networks.")
        for name, value in self.body.state_dict(keep_vars=True).items():
            for index, state in enumerate(states):
                if name not in state or tuple(state[name].shape) != tuple(value.shape[1:]):
                    raise TicketlabError(f"The state of network {index} has no {name!r} of shape {tuple(value.shape[1:])}.")
                value[index].copy_(state[name])


def _convert(module: nn.Module, peers: Sequence[nn.Module], networks: int, seen_conv: list[bool]) -> nn.Module:
    """The stacked replacement of ``module`` (peers: the same module in every network), recursively."""
    if isinstance(module, nn.Linear):
        return StackedLinear(peers)
    if isinstance(module, nn.Conv2d):
        seen_conv[0] = True
        return StackedConv2d(peers)
    if isinstance(module, nn.BatchNorm2d):
        return StackedBatchNorm2d(peers)
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise StackingUnsupported("Cannot stack a Flatten that does not flatten whole examples.")
        return StackedFlatten(networks, grouped=seen_conv[0])
    children = dict(module.named_children())
    if not children:
        if isinstance(module, _PASS_THROUGH) and not list(module.parameters(recurse=False)):
            return module
        raise StackingUnsupported(f"Cannot stack a {type(module).__name__} layer; its networks train one at a time.")
    if list(module.parameters(recurse=False)) or list(module.buffers(recurse=False)):
        raise StackingUnsupported(f"Cannot stack {type(module).__name__}, which holds parameters of its own.")
    for name, child in children.items():
        setattr(module, name, _convert(child, [getattr(p, name) for p in peers], networks, seen_conv))
    return module


def _first_leaf(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if not list(module.children()):
            return module
    return model


def stack_networks(models: Sequence[nn.Module]) -> StackedNetwork:
    """One `StackedNetwork` of ``models`` (same architecture; their current weights and buffers, copied).

    Raises `StackingUnsupported` for a module type it cannot stack, and TicketlabError when the
    models differ in architecture.
    """
    if not models:
        raise TicketlabError("Stacking needs at least one network.")
    reference = list(models[0].state_dict().items())
    for other in models[1:]:
        theirs = other.state_dict()
        if [(n, tuple(t.shape)) for n, t in reference] != [(n, tuple(t.shape)) for n, t in theirs.items()]:
            raise TicketlabError("Only networks of the same architecture can be stacked.")
    grouped_input = isinstance(_first_leaf(models[0]), nn.Conv2d)
    body = _convert(copy.deepcopy(models[0]), list(models), len(models), [False])
    stacked = StackedNetwork(body, len(models), grouped_input)
    stacked.train(models[0].training)
    return stacked


#: How far a stacked network's outputs may lie from the network's own (relative to the largest
#: output) for `check_stackable` to accept it: float reassociation is ~1e-7, a wrong layout ~1.
STACKING_TOLERANCE = 1e-4


@torch.no_grad()
def check_stackable(model: nn.Module, input_shape: Sequence[int]) -> None:
    """Raise `StackingUnsupported` unless ``model`` stacks *and* its stacked forward computes what
    the model computes, on a seeded batch of ``input_shape`` (eval mode, on a copy).

    The module types alone cannot tell: a user model whose forward reshapes its input in its own
    code (``x.flatten(1)``, ``x.view(len(x), -1)``) sees the stacked layout and mixes networks, or
    fails. One forward of two copies settles it, for the price of one small batch."""
    probe = copy.deepcopy(model).eval()
    try:
        stacked = stack_networks([probe, probe]).eval()
        x = torch.randn(2, 3, *input_shape, generator=torch.Generator().manual_seed(0))
        device = next((p.device for p in probe.parameters()), torch.device("cpu"))
        together, alone = stacked(x.to(device)), probe(x[0].to(device))
    except StackingUnsupported:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of the stacked layout means: train alone
        raise StackingUnsupported(f"the stacked forward fails ({type(err).__name__})") from None
    scale = float(alone.abs().max()) or 1.0
    if together.shape[1:] != alone.shape or float((together[0] - alone).abs().max()) > STACKING_TOLERANCE * scale:
        raise StackingUnsupported("the model's own forward does not keep the networks apart when stacked")


__all__ = ["STACKING_TOLERANCE", "StackedBatchNorm2d", "StackedConv2d", "StackedFlatten", "StackedLinear",
           "StackedNetwork", "StackingUnsupported", "check_stackable", "stack_networks"]
