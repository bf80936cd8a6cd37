"""The model registry (timm style): every network ticketlab can train, by name.

>>> model = create_model("lenet300", (1, 28, 28), 10, seed=0)   # a batch (N, 1, 28, 28) -> (N, 10)

One small module per family: ``mlp`` (lenet300, mlp1d), ``conv`` (conv2, conv4, conv6),
``resnet`` (resnet20), ``vgg`` (vgg16). A builder takes ``(input_shape, num_classes)``, where
``input_shape`` is one example's shape without the batch dimension, and returns a module mapping a
float32 batch ``(N, *input_shape)`` to logits ``(N, num_classes)``.

Contract every model keeps, because pruning, masks and reports rely on it:

* the classifier (output layer) is the last `nn.Linear` in ``model.modules()`` order;
* the prunable weights are the ``.weight`` of its `nn.Linear` / `nn.Conv2d` modules: no weight
  parametrizations or custom weight layers, so masks can address them by parameter name;
* ``forward`` is deterministic (no dropout, no sampling), so a ticket's accuracy depends only on
  its weights and the data;
* ``model.input_shape`` and ``model.num_classes`` record what it was built for;
* initialisation depends only on `create_model`'s ``seed`` and leaves the caller's RNG untouched,
  so the same seed always rebuilds the same initial network (the "winning ticket" init).
"""

from __future__ import annotations

# Importing the family modules registers their models; this order is `list_models()` order.
from . import mlp  # noqa: F401,I001
from . import conv  # noqa: F401
from . import resnet  # noqa: F401
from . import vgg  # noqa: F401
from ._registry import Builder, ModelInfo, create_model, list_models, register_model
from ..user_code import trust_user_code

__all__ = ["Builder", "ModelInfo", "create_model", "list_models", "register_model", "trust_user_code"]
