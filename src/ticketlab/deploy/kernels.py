"""Execution backends for a pruned Linear layer, and the layouts they read.

A backend turns a weight (out, in) and bias into its own packed form once (`pack`) and then runs
``y = x @ W.T + b`` on 2-D inputs (`run`). `ticketlab.deploy.execute` measures the available ones
per layer and batch size and keeps the fastest. Measured on a 2-core x86 machine (fp32, 4096²,
medians of alternated repeats; benchmarks/sparse_linear.py reproduces them):

* ``dense``     — ``F.linear``; always available, the reference every choice must beat.
* ``torch-csr`` — torch's sparse CSR (int32 indices) via ``addmm``: good at batch ≥ 8 and high
  sparsity (≈11× dense at 90% sparse, batch 8), poor at batch 1 (1.7× at 90%, 0.3× at 50%).
* ``cpu-csr``   — ticketlab's C++ kernel (``csrc/sparse_kernels.cpp``), CSR with int16 column
  blocks: ≈9× dense at 90% sparse batch 1, 2.2× at 70%, and at least torch CSR's speed at batch
  8 and 64. ``cpu-bitmask`` (batch 1, AVX-512 compress) wins near 30–50% density.
  The kernels are compiled at first use with the machine's C++ compiler (and ``ninja``), about
  half a minute once, then cached by torch. Without a compiler these two backends are simply
  unavailable and `kernel_status` says why; numba, the JIT library we also measured, reached
  only about 40% of the C++ kernel's speed at batch 1 and was left out.
* ``cuda-2:4``  — NVIDIA's semi-structured 2:4 sparsity through cuSPARSELt (bf16 on compute
  capability ≥ 8.0, with the algorithm cuSPARSELt's search picks, `Packed24`): on an H200,
  1.21–1.31× dense on LLaMA-7B MLP shapes at 16384–32768 tokens, 0.4–0.75× at 4096, far slower
  on small counts, which the measurement catches (benchmarks/gpu_24_variants.py).
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ..errors import TicketlabError

#: Set ``TICKETLAB_CPU_KERNELS=0`` to never build or use the C++ kernels.
KERNELS_ENV = "TICKETLAB_CPU_KERNELS"
_SOURCE = Path(__file__).with_name("csrc") / "sparse_kernels.cpp"
_FUNCTIONS = ["csr_linear", "bitmask_linear", "mlp_forward", "simd_path"]
_BLOCK = 32768
_lock = threading.Lock()
_state: dict[str, Any] = {"module": None, "error": None, "build_seconds": None}


def load_extension() -> Any | None:
    """The compiled kernels (built once per machine and cached), or None with the reason in
    `kernel_status` (no compiler, no ninja, disabled by ``TICKETLAB_CPU_KERNELS=0``)."""
    if _state["module"] is not None:  # the hot path: no lock once loaded
        return _state["module"]
    with _lock:
        if _state["module"] is not None or _state["error"] is not None:
            return _state["module"]
        if os.environ.get(KERNELS_ENV, "1").strip().lower() in ("0", "false", "off", "no"):
            _state["error"] = f"disabled by {KERNELS_ENV}=0"
            return None
        started = time.perf_counter()
        source = _SOURCE.read_text()
        # the build directory is named after the source's hash: another version of these kernels
        # (another ticketlab install) never shares, rebuilds or loads it
        name = "ticketlab_sparse_kernels_" + hashlib.sha256(source.encode()).hexdigest()[:12]
        try:
            from torch.utils.cpp_extension import load_inline

            _state["module"] = load_inline(
                name=name, cpp_sources=source, functions=_FUNCTIONS,
                extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as err:  # noqa: BLE001 - no compiler, no ninja, no headers: all mean "unavailable"
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            _state["error"] = (f"the C++ sparse kernels could not be built ({type(err).__name__}: {first}); "
                               "install a C++ compiler and `pip install ninja` for the fastest CPU path")
            return None
        _state["build_seconds"] = time.perf_counter() - started
        return _state["module"]


def kernel_status() -> dict[str, Any]:
    """Whether the C++ kernels are loaded, their SIMD path, or why they are not available."""
    module = load_extension()
    return {"available": module is not None, "simd": module.simd_path() if module is not None else None,
            "reason": _state["error"], "build_seconds": _state["build_seconds"]}


# --- layouts -----------------------------------------------------------------------------------------
def csr_parts(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(crow int32 (out + 1,), col int32 (nnz,), values (nnz,)) of the non-zeros of ``weight`` (out, in)."""
    rows, cols = (weight != 0).nonzero(as_tuple=True)
    crow = torch.zeros(weight.shape[0] + 1, dtype=torch.int32)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=weight.shape[0]), 0).to(torch.int32)
    return crow, cols.to(torch.int32), weight[rows, cols].contiguous()


def csr16_parts(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Column-blocked CSR with int16 indices: (ptr int32 (out, blocks + 1), idx int16, values)."""
    crow, cols, values = csr_parts(weight)
    out, width = weight.shape
    blocks = max(1, -(-width // _BLOCK))
    rows = torch.repeat_interleave(torch.arange(out), (crow[1:] - crow[:-1]).long())
    block = cols.long() // _BLOCK
    counts = torch.zeros(out * blocks, dtype=torch.int64).index_add_(0, rows * blocks + block,
                                                                    torch.ones_like(block)).view(out, blocks)
    ptr = torch.zeros(out, blocks + 1, dtype=torch.int64)
    ptr[:, 1:] = torch.cumsum(counts, 1)
    ptr += crow[:-1].long().view(-1, 1)
    local = (cols.long() - block * _BLOCK).to(torch.int16)  # offsets < 32768 fit int16
    return ptr.to(torch.int32).contiguous(), local.contiguous(), values


def bitmask_parts(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bits int64 (out, ⌈in/64⌉), rowptr int32 (out + 1,), fp32 values padded by 16 zeros)."""
    out, width = weight.shape
    words = -(-width // 64)
    flags = torch.zeros(out, words * 64, dtype=torch.bool)
    flags[:, :width] = weight != 0
    shifts = torch.arange(64, dtype=torch.int64)
    bits = (flags.view(out, words, 64).to(torch.int64) << shifts).sum(dim=2)  # wraps to the int64 bit pattern
    crow, _, values = csr_parts(weight.float())
    return bits.contiguous(), crow, torch.cat([values, values.new_zeros(16)])


# --- backends -----------------------------------------------------------------------------------------
class Backend(ABC):
    """One way to run a pruned Linear layer; stateless (the packed weight is passed back in)."""

    name: str = ""

    def unavailable(self, weight: torch.Tensor) -> str | None:
        """Why this backend cannot run ``weight`` here (None when it can)."""
        return None

    def batch_sizes(self) -> tuple[int, int]:
        """The smallest and largest number of input rows this backend accepts."""
        return 1, 1 << 62

    @abstractmethod
    def pack(self, weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
        """The backend's own copy of the layer (built once)."""

    @abstractmethod
    def run(self, packed: Any, x: torch.Tensor) -> torch.Tensor:
        """``x`` (rows, in) -> (rows, out) in ``x``'s dtype."""


class Dense(Backend):
    name = "dense"

    def pack(self, weight, bias):
        return weight.contiguous(), bias

    def run(self, packed, x):
        return F.linear(x, *packed)


class TorchCSR(Backend):
    """torch's CSR tensor with int32 indices, ``addmm(b, W, xᵀ)ᵀ`` (its fastest call form here)."""

    name = "torch-csr"

    def unavailable(self, weight):
        if weight.device.type != "cpu" or weight.dtype != torch.float32:
            return "torch's CPU CSR matmul is used for float32 only"
        return None

    def pack(self, weight, bias):
        crow, col, values = csr_parts(weight)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            matrix = torch.sparse_csr_tensor(crow, col, values, size=tuple(weight.shape), check_invariants=False)
        column_bias = (bias if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype)).view(-1, 1)
        return matrix, column_bias.contiguous()

    def run(self, packed, x):
        matrix, column_bias = packed
        return torch.addmm(column_bias, matrix, x.t()).t()


class _CppBackend(Backend):
    def unavailable(self, weight):
        if weight.device.type != "cpu":
            return "the C++ kernels run on the CPU"
        if weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return f"no kernel for {weight.dtype}"
        return None if load_extension() is not None else _state["error"]


class CpuCSR(_CppBackend):
    """ticketlab's CSR kernel with int16 column blocks (values in the weight's dtype, fp32 math)."""

    name = "cpu-csr"

    def pack(self, weight, bias):
        ptr, idx, values = csr16_parts(weight)
        return ptr, idx, values, (bias.float().contiguous() if bias is not None else None), weight.shape[0]

    def run(self, packed, x):
        ptr, idx, values, bias, n_out = packed
        y = load_extension().csr_linear(ptr, idx, values, x.float().contiguous(), bias, n_out)
        return y if x.dtype == torch.float32 else y.to(x.dtype)


class CpuBitmask(_CppBackend):
    """ticketlab's bitmask kernel: one input row at a time, best near 50% density with AVX-512."""

    name = "cpu-bitmask"

    def batch_sizes(self):
        return 1, 1

    def pack(self, weight, bias):
        bits, rowptr, values = bitmask_parts(weight)
        return bits, rowptr, values, (bias.float().contiguous() if bias is not None else None)

    def run(self, packed, x):
        y = load_extension().bitmask_linear(*packed[:3], x.float().contiguous(), packed[3])
        return y if x.dtype == torch.float32 else y.to(x.dtype)


class CsltAlgorithm(NamedTuple):
    """What cuSPARSELt's search picks for one shape; the defaults are ``torch._cslt_sparse_mm``'s own.

    The split-K values belong with the id: the search picks them together, so running the id with
    the default split is not the configuration the search timed.
    """

    alg_id: int = 0
    split_k: int = 1
    split_k_mode: int = -1

    def keywords(self) -> dict[str, int]:
        """These as ``torch._cslt_sparse_mm`` keywords, only those this torch's schema names (older
        torch calls the third ``split_k_one_kernel``, a bool, so it keeps its default there)."""
        names = _cslt_sparse_mm_keywords()
        return {name: value for name, value in self._asdict().items() if name in names}


@functools.cache
def _cslt_sparse_mm_keywords() -> frozenset[str]:
    """The argument names of this torch's ``aten::_cslt_sparse_mm`` (read once)."""
    return frozenset(argument.name for argument in torch.ops.aten._cslt_sparse_mm.default._schema.arguments)


class Packed24:
    """A bfloat16 2:4 weight compressed for cuSPARSELt, with the matmul algorithm chosen per row bucket.

    Why tuned: cuSPARSELt's default algorithm (0) loses to dense even at 16384 tokens on an H200
    (0.48-0.80x, torch 2.11, bf16, LLaMA-7B shapes), while the one ``_cslt_sparse_mm_search`` picks
    reaches 1.21-1.31x on the MLP shapes at 16384-32768 tokens (benchmarks/gpu_24_variants.py).
    The search runs once per power-of-two row bucket. float16 is refused (`Cuda24.unavailable`):
    on the same machine its search failed inside cuSPARSELt and left the CUDA context unusable,
    and its results through torch's tensor subclass did not match dense.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.bias = bias
        self.matrix = torch._cslt_compress(weight.contiguous())
        self.algorithms: dict[int, CsltAlgorithm] = {}

    def algorithm_for(self, xt: torch.Tensor) -> CsltAlgorithm:
        """The search's choice for ``xt``'s (in, rows) bucket (torch's defaults if the search is refused)."""
        bucket = 1 << (xt.shape[1] - 1).bit_length()
        if bucket not in self.algorithms:
            try:
                self.algorithms[bucket] = cusparselt_algorithm(self.matrix, xt)
            except (RuntimeError, TypeError):
                self.algorithms[bucket] = CsltAlgorithm()
        return self.algorithms[bucket]

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (rows, in), rows divisible by 8 -> (rows, out), contiguous."""
        xt = x.t()
        y = torch._cslt_sparse_mm(self.matrix, xt, transpose_result=True, **self.algorithm_for(xt).keywords())
        return y if self.bias is None else y + self.bias


def cusparselt_algorithm(matrix: torch.Tensor, xt: torch.Tensor) -> CsltAlgorithm:
    """cuSPARSELt's fastest configuration for ``matrix @ xt`` (transposed result), through
    ``torch._C._cusparselt.mm_search`` where this torch has it (``_cslt_sparse_mm_search`` is
    deprecated since torch 2.11; it returns only the id, so no split there) and the older entry
    point elsewhere."""
    search = getattr(getattr(torch._C, "_cusparselt", None), "mm_search", None)
    if search is not None:
        found = search(matrix, xt, None, None, None, True)  # (alg_id, split_k, split_k_mode, max_alg_id)
        return CsltAlgorithm(*(int(value) for value in found[:3]))
    return CsltAlgorithm(int(torch._cslt_sparse_mm_search(matrix, xt, transpose_result=True)))


class Cuda24(Backend):
    """NVIDIA 2:4 semi-structured sparsity through cuSPARSELt (`Packed24`)."""

    name = "cuda-2:4"

    def unavailable(self, weight):
        if weight.dtype != torch.bfloat16:
            return ("2:4 execution needs bfloat16 weights (float16 failed inside cuSPARSELt on an H200 with "
                    "torch 2.11; convert the model with .to(torch.bfloat16))")
        if weight.device.type != "cuda":
            return "2:4 execution needs a CUDA device"
        if torch.cuda.get_device_capability(weight.device) < (8, 0):
            return "2:4 execution needs compute capability 8.0 or newer"
        if not torch.backends.cusparselt.is_available():
            return "2:4 execution needs torch built with cuSPARSELt"
        rows, cols = weight.shape
        if rows % 64 or cols % 64:
            return "2:4 execution needs both dimensions divisible by 64"
        groups = (weight != 0).view(rows, cols // 4, 4).sum(dim=2)
        if bool((groups > 2).any()):
            return "the weight is not 2:4 sparse"
        return None

    def batch_sizes(self):
        return 8, 1 << 62

    def pack(self, weight, bias):
        return Packed24(weight, bias)

    def run(self, packed, x):
        rows = x.shape[0]
        pad = (-rows) % 8  # the kernels need a row count divisible by 8
        if pad:
            x = torch.cat([x, x.new_zeros(pad, x.shape[1])])
        y = packed.linear(x.contiguous())
        return y[:rows] if pad else y


BACKENDS: dict[str, Backend] = {b.name: b for b in (Dense(), TorchCSR(), CpuCSR(), CpuBitmask(), Cuda24())}


def backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise TicketlabError(f"Unknown execution backend {name!r}; choose from {', '.join(BACKENDS)}.")
    return BACKENDS[name]
