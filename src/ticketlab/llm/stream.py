"""Pruning a model larger than memory: weights stream from the safetensors shards, block by block.

The model is built as a skeleton whose parameters live on PyTorch's ``meta`` device (no memory);
buffers computed at construction (rotary tables) stay real. The tensors outside the blocks
(embeddings, final norm, head) are loaded once. Then the engine (`prune_model`) visits the blocks
in order through a `ShardLoader`: it loads block ``i``'s tensors from the shards right before the
block is used and, once the block is pruned and its outputs computed, writes them into the output
shard of that block and returns them to ``meta``. At any time memory holds at most the block being
pruned, the calibration activations and the embedding and head — never the whole model — and the
result equals the in-memory path's bit for bit (the same tensors, cast the same way, go through the
same arithmetic).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TicketlabError
from ..files import read_json
from ..memory import memory_limit_bytes
from .packed_masks import MASK_SPILL_NAME, PackedMasks

SHARD_NAME = "model-{index:05d}-of-{total:05d}.safetensors"
INDEX_NAME = "model.safetensors.index.json"


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
#: The largest safetensors header accepted (a crafted length must not make us allocate gigabytes).
MAX_HEADER = 100 << 20


class SafetensorsFile:
    """Reads single tensors of a safetensors file with plain file reads: only the tensor's own bytes
    are allocated (memory-mapping a whole shard would count the shard against the process)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with self.path.open("rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                if not 0 < size <= MAX_HEADER:
                    raise ValueError("bad header length")
                header = json.loads(handle.read(size))
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise TicketlabError(f"Cannot read {str(path)!r} as safetensors ({err}).") from None
        if not isinstance(header, dict):
            raise TicketlabError(f"Cannot read {str(path)!r} as safetensors (malformed header).")
        header.pop("__metadata__", None)
        self.start = 8 + size
        self.entries = header

    def keys(self) -> list[str]:
        return list(self.entries)

    def read(self, name: str) -> torch.Tensor:
        entry = self.entries[name]
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = [int(v) for v in entry["shape"]]
            begin, end = (int(v) for v in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise TicketlabError(f"{str(self.path)!r} describes {name!r} in a way this reader does not know.") from None
        nbytes = end - begin
        expected = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        if nbytes != expected or begin < 0:
            raise TicketlabError(f"{str(self.path)!r} gives {name!r} {nbytes} bytes for a {shape} {dtype} tensor.")
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        with self.path.open("rb") as handle:
            handle.seek(self.start + begin)
            if handle.readinto(memoryview(buffer.numpy())) != nbytes:
                raise TicketlabError(f"{str(self.path)!r} is truncated (in {name!r}).")
        return buffer.view(dtype).reshape(shape)


class ShardIndex:
    """Tensor name → shard file of a model directory's safetensors weights; reads one tensor at a time."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        single = self.directory / "model.safetensors"
        if single.is_file():
            shard = SafetensorsFile(single)
            self.files = {name: shard for name in shard.keys()}
            return
        index_path = self.directory / INDEX_NAME
        if not index_path.is_file():
            raise TicketlabError(f"{str(directory)!r} has no safetensors weights to stream.")
        index = read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise TicketlabError(f"{str(index_path)!r} is damaged (no weight_map).")
        shards: dict[str, SafetensorsFile] = {}
        self.files = {}
        for name, shard in weight_map.items():
            path = self.directory / str(shard)
            if "/" in str(shard) or "\\" in str(shard) or not path.is_file():
                raise TicketlabError(f"{str(directory)!r} lacks the shard {shard!r} that holds {name!r}.")
            if str(shard) not in shards:
                shards[str(shard)] = SafetensorsFile(path)
            if name not in shards[str(shard)].entries:
                raise TicketlabError(f"The shard {shard!r} does not hold {name!r}, which the index puts there.")
            self.files[name] = shards[str(shard)]

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        tensor = self.files[name].read(name)
        return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor

    def total_bytes(self) -> int:
        return sum(shard.path.stat().st_size for shard in {id(s): s for s in self.files.values()}.values())

    def file_count(self) -> int:
        return len({id(s) for s in self.files.values()})


def _assign(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Put ``value`` in place of parameter or buffer ``name`` (a dotted path)."""
    owner_name, _, key = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    if key in owner._parameters:
        owner._parameters[key] = nn.Parameter(value, requires_grad=False)
    elif key in owner._buffers:
        owner._buffers[key] = value
    else:
        raise TicketlabError(f"The checkpoint holds {name!r}, which the model built from its config does not have.")


def build_skeleton(directory: Path, kind: str, dtype: torch.dtype) -> nn.Module:
    """The model of ``directory``'s config built on the ``meta`` device (no memory), its computed
    buffers (rotary tables) rebuilt on the CPU, and its floating parameters of ``dtype``."""
    from .io import _transformers, quiet_transformers

    transformers = _transformers()
    with quiet_transformers():
        config = transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
        auto = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModel
        with torch.device("meta"):
            model = auto.from_config(config)
    _rebuild_buffers(model, config)
    for name, param in list(model.named_parameters()):
        if param.dtype != dtype and param.is_floating_point():
            _assign(model, name, torch.empty(param.shape, dtype=dtype, device="meta"))
    return model.eval()


def _rebuild_buffers(model: nn.Module, config: Any) -> None:
    """Buffers a module computes at construction (not stored in checkpoints, e.g. rotary ``inv_freq``)
    are meta after a meta build: rebuild each such module on the CPU from the config and copy them."""
    for _, module in model.named_modules():
        missing = [k for k, b in module._buffers.items() if b is not None and b.device.type == "meta"]
        if not missing:
            continue
        fresh = None
        for build in (lambda: type(module)(config=config), lambda: type(module)(config)):
            try:
                fresh = build()
                break
            except Exception:  # noqa: BLE001 - constructors differ; a module we cannot rebuild stays meta
                continue
        if fresh is None:
            continue
        for key in missing:
            value = fresh._buffers.get(key)
            if value is not None and value.device.type != "meta":
                module._buffers[key] = value


def check_materialised(model: nn.Module) -> None:
    """After every weight has been read, nothing the forward pass uses may still be on ``meta``."""
    for name, buffer in model.named_buffers():
        if buffer.device.type == "meta":
            raise TicketlabError(f"The buffer {name!r} can neither be read from the checkpoint nor rebuilt, so "
                                 "this model cannot be streamed; prune it without --stream.")


class ShardLoader:
    """Loads block ``i`` from the source shards before the engine uses it; writes it to its output
    shard and frees it afterwards (`ticketlab.llm.engine.BlockLoader`)."""

    def __init__(self, model: nn.Module, index: ShardIndex, blocks_path: str, num_blocks: int, out: Path,
                 dtype: torch.dtype):
        self.model, self.index, self.out, self.dtype = model, index, Path(out), dtype
        self.prefixes = [f"{blocks_path}.{i}." for i in range(num_blocks)]
        self.total = num_blocks + 1
        self.weight_map: dict[str, str] = {}
        self.total_size = 0
        self.masks = PackedMasks(self.out / MASK_SPILL_NAME)

    def names_of(self, index: int) -> list[str]:
        return [n for n in self.index.files if n.startswith(self.prefixes[index])]

    def outside_names(self) -> list[str]:
        return [n for n in self.index.files if not any(n.startswith(p) for p in self.prefixes)]

    def load(self, index: int, block: nn.Module) -> None:
        for name in self.names_of(index):
            _assign(self.model, name, self.index.read(name, self.dtype))

    def store_mask(self, name: str, keep: torch.Tensor) -> None:
        self.masks.add(name, keep)

    def release(self, index: int, block: nn.Module) -> None:
        names = self.names_of(index)
        self._write(index + 1, names)
        parameters = dict(block.named_parameters(prefix=self.prefixes[index].rstrip(".")))
        for name in names:
            if name in parameters:
                current = parameters[name]
                _assign(self.model, name, torch.empty(current.shape, dtype=current.dtype, device="meta"))

    def load_outside(self) -> None:
        for name in self.outside_names():
            _assign(self.model, name, self.index.read(name, self.dtype))
        if hasattr(self.model, "tie_weights"):
            self.model.tie_weights()
        prefixes = tuple(self.prefixes)
        missing = [n for n, p in self.model.named_parameters() if p.device.type == "meta" and not n.startswith(prefixes)]
        if missing:
            raise TicketlabError(f"The checkpoint holds no weights for {missing[0]!r}; it cannot be streamed.")
        check_materialised(self.model)

    def copy_untouched(self, first: int) -> None:
        """Blocks from ``first`` on were not pruned (no targets): copy them shard to shard."""
        for index in range(first, len(self.prefixes)):
            names = self.names_of(index)
            self._write(index + 1, names, {n: self.index.read(n) for n in names})

    def finish(self) -> None:
        """Write the tensors outside the blocks (shard 0) and the index."""
        self._write(0, self.outside_names())
        index = {"metadata": {"total_size": self.total_size, "format": "pt"},
                 "weight_map": dict(sorted(self.weight_map.items()))}
        (self.out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")

    def _write(self, shard: int, names: list[str], tensors: dict[str, torch.Tensor] | None = None) -> None:
        from safetensors.torch import save_file

        if not names:
            return
        state = self.model.state_dict(keep_vars=False) if tensors is None else tensors
        values = {n: state[n].detach().contiguous() for n in names}
        filename = SHARD_NAME.format(index=shard + 1, total=self.total)
        try:
            save_file(values, str(self.out / filename), metadata={"format": "pt"})
        except Exception as err:  # noqa: BLE001 - a failed write (disk full) surfaces as several types
            raise TicketlabError(f"Cannot write {filename} ({type(err).__name__}: {str(err)[:120]}).") from None
        for name, value in values.items():
            self.weight_map[name] = filename
            self.total_size += value.numel() * value.element_size()


def check_room_for_blocks(index: ShardIndex, prefixes: list[str], dtype: torch.dtype) -> int:
    """The largest block's bytes in ``dtype``; a TicketlabError when the memory this process may use
    cannot hold two of them (the block being pruned and its statistics and copies)."""
    size = torch.empty((), dtype=dtype).element_size()
    largest = 0
    for prefix in prefixes:
        total = 0
        for name, shard in index.files.items():
            if name.startswith(prefix):
                total += torch.Size(shard.entries[name]["shape"]).numel() * size
        largest = max(largest, total)
    limit = memory_limit_bytes()
    if limit is not None and limit < 2 * largest:
        raise TicketlabError(f"This process may use {limit / 2**20:.0f} MiB of memory, but one block of the model "
                             f"holds {largest / 2**20:.0f} MiB: streaming needs room for about two blocks.")
    return largest


__all__ = ["INDEX_NAME", "check_room_for_blocks", "SafetensorsFile", "ShardIndex", "ShardLoader", "build_skeleton", "check_materialised"]
