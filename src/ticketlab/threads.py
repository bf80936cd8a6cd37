"""How many CPU threads torch uses: ``--threads auto`` picks from the size of one training step.

Small networks lose time to a second thread: each step is a handful of short matrix products, and
the threads meet at a barrier after every one. On a machine where another process is busy, a
thread that waits for a core at that barrier stalls the whole step (measured on a 2-core machine:
``imp --data digits --steps 100it`` took 32 s at 2 threads beside a busy process, 5.8 s at 1).
`default_threads` therefore gives each thread at least `STEP_MACS_PER_THREAD` multiply-accumulates
of every step; workers (``--workers N``) split the cores between them first. Networks small enough
for one thread also train to the same bits on every machine (a convolution's sums depend on the
thread count: Conv-2 on digits differs by 1e-5 after 20 steps at 1 vs 2 threads; LeNet does not).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from . import validate
from .errors import TicketlabError
from .flops import network_cost

#: The multiply-accumulates of one training step's forward pass (batch x dense MACs per example)
#: that each thread gets at least under ``--threads auto``; measured with benchmarks/threads.py,
#: see `default_threads`.
STEP_MACS_PER_THREAD = 2_000_000_000
#: The most threads accepted per core (more only adds switching).
MAX_THREADS_PER_CORE = 4


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under taskset or SLURM), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def set_threads(n: int) -> int:
    """Use ``n`` threads for torch's CPU operations in this process (intra-op, and inter-op where
    torch still allows changing it: only before its first parallel work). Returns ``n``.

    ``n`` must be an integer from 1 to `MAX_THREADS_PER_CORE` x ``os.cpu_count()`` (`check_threads`).
    """
    check_threads(n)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # inter-op work already started: torch keeps its pool (it rarely matters here)
        pass
    return n


def check_threads(n: int) -> int:
    """``n`` if it is an integer from 1 to `MAX_THREADS_PER_CORE` x ``os.cpu_count()``, else one sentence."""
    high = MAX_THREADS_PER_CORE * max(1, os.cpu_count() or 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= high:
        raise TicketlabError(f"The number of threads --threads must be a whole number from 1 to {high} "
                             f"({MAX_THREADS_PER_CORE} per core of this machine), not {n!r}.")
    return n


def default_threads(step_macs: float, cores: int | None = None) -> int:
    """Threads for a training step of ``step_macs`` multiply-accumulates (forward, whole batch) on
    ``cores`` cores (default: `available_cores`): one per `STEP_MACS_PER_THREAD`, rounded down,
    at least 1 and at most ``cores``. Monotone: a bigger step never gets fewer threads.

    Measured with benchmarks/threads.py on the project's 2-core CPU (torch 2.13, Adam, batch 60,
    median of 3 alternating runs), as t(2 threads) / t(1 thread), above 1 = the second thread
    costs time. The machine was shared with other jobs throughout (load average 5-7 except the
    first two cases of the first run, at 0.7); "+1 busy" adds a one-thread matmul loop. Ranges
    are over separate runs::

        case                         step MACs   as found     +1 busy
        lenet300 on digits                3.0M   0.91-36.5    9.7-20.6
        lenet300 on mnist5k              16.0M   0.79-13.0    9.1-39.3
        lenet300 x2 on mnist5k           35.5M   7.1-10.4     5.7-7.5
        lenet300 x4 on mnist5k           85.5M   3.6-4.8      2.0-5.8
        conv2 on digits                  164M    6.8-10.8     3.7-4.3
        conv2 on mnist5k                 1.96G   0.87-1.80    0.77
        resnet20 on 3x32x32              2.45G   3.1-7.6      6.7
        tiny LM (llm train-tiny)         2.28G   1.7-2.3 (12 steps, 2 runs of the command)

    A second thread gained at most 1.27x (16M, in the one quiet moment) and lost up to 39x beside
    other work; only from about 2G per step (Conv-2 on 28x28 inputs) did it break even on the
    busy machine, because the time threads lose at barriers and waiting for a core is a cost per
    operation that a bigger step amortises. So each thread gets at least 2G: every LeNet, Conv-2
    on MNIST (1.96G), ResNet-20 at batch 60 and the tiny LM run on one thread (and so on every
    machine to the same bits); Conv-4 on MNIST (4.5G) and ResNet-20 at batch 128 (5.2G) on two;
    Conv-6 on MNIST (7.0G) on three; VGG-16 on CIFAR-10 (40G at batch 128) on up to 20 cores. On a machine shared with other work,
    ``--threads 1`` was fastest at almost every size here.
    """
    validate.real(step_macs, "The MACs per training step", low=0.0)
    cores = available_cores() if cores is None else validate.integer(cores, "The number of cores", low=1)
    return max(1, min(cores, int(step_macs // STEP_MACS_PER_THREAD)))


def resolve_threads(value: str | int, step_macs: float, workers: int = 1) -> int:
    """The threads of each process for ``--threads value``: ``"auto"`` -> `default_threads` on this
    process's share of the cores (``max(1, cores // workers)``, so ``--workers N`` never
    oversubscribes), a number -> that number (validated as `set_threads` does), in every worker.
    """
    validate.integer(workers, "The number of workers --workers", low=1, high=4096)
    word = str(value).strip().lower()
    if word == "auto":
        return default_threads(step_macs, worker_threads(workers))
    if isinstance(value, bool) or not (isinstance(value, int) or word.isdigit()):
        raise TicketlabError(f"Cannot read --threads {value!r}: write auto or a number of threads such as 1.")
    return check_threads(int(word))


def use_threads(value: str | int, step_macs: float, workers: int = 1) -> int:
    """Resolve ``--threads value`` for a step of ``step_macs`` (`resolve_threads`) and set it
    (`set_threads`); the count now in use. The one call every command and runner makes."""
    return set_threads(resolve_threads(value, step_macs, workers=workers))


def step_macs(model: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> int:
    """Dense multiply-accumulates of one forward pass over a batch: ``batch_size`` x the weight
    MACs per example of `ticketlab.flops.network_cost` (the measure `default_threads` takes, and
    the one ``units.group`` uses to decide stacking)."""
    return network_cost(model, tuple(input_shape)).dense_macs * int(batch_size)


def token_step_macs(model: nn.Module, tokens_per_step: int) -> int:
    """The step MACs of a language model: ``tokens_per_step`` (batch x context) x the entries of
    its ``nn.Linear`` weights (attention scores and embedding lookups left out), for
    `default_threads` when the input is token ids rather than a float tensor."""
    per_token = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return per_token * int(tokens_per_step)


def worker_threads(workers: int) -> int:
    """Each of ``workers`` local processes' share of the cores: ``max(1, cores // workers)``."""
    return max(1, available_cores() // workers)


__all__ = ["MAX_THREADS_PER_CORE", "STEP_MACS_PER_THREAD", "available_cores", "check_threads", "default_threads",
           "resolve_threads", "set_threads", "step_macs", "token_step_macs", "use_threads", "worker_threads"]
