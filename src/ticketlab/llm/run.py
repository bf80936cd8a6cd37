"""`run_oneshot`: the one-shot workflow as a library call — load → calibrate → evaluate → prune →
evaluate → write — from one frozen, validated config. ``ticketlab llm prune`` only parses flags into
a `OneShotRun` and prints what `run_oneshot` returns.

Everything that can fail on user input (config, output directory, device, dtype, texts, model
directory, targets, sequence length, calibration) is checked before the long work starts, so a bad
request fails in seconds and leaves nothing behind. The output is written atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import validate
from ..devices import resolve_device
from ..errors import TicketlabError
from ..flags import json_value, setting
from ..progress import Progress
from ..threads import resolve_threads, token_step_macs, use_threads
from ..memory import current_rss_bytes, peak_rss_bytes, return_freed_memory_promptly
from .config import OneShotConfig
from .report import PruningReport

#: Calibration windows drawn by default (fewer when the text is short; see `default_nsamples`).
DEFAULT_NSAMPLES = 128
MAX_NSAMPLES = 1 << 20
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class CalibrationConfig:
    """Where calibration windows come from: a text file or directory (None: the packaged text), its
    ``part`` (``train``: the first 90%, or ``all``), ``nsamples`` windows (None: `default_nsamples`)
    of ``seqlen`` tokens (None: min(2048, context)), drawn with ``seed``; ``batch_size`` samples per
    block call (None: chosen from free memory)."""

    text: str | None = setting(None, name="--calib", dest="calib", metavar="PATH",
                               help="Calibration text: a file or a directory of .txt files (default: the packaged "
                                    "English text).")
    part: str = setting("train", name="--calib-part", dest="calib_part", choices=lambda: ("train", "all"),
                        help="Draw windows from the first 90% of the text (train) or from all of it.")
    nsamples: int | None = setting(None, type=int,
                                   help=f"Number of calibration windows [default: {DEFAULT_NSAMPLES}, or fewer when "
                                        "the text is too short to fill them without reuse].")
    seqlen: int | None = setting(None, type=int, help="Tokens per window [default: min(2048, model context)].")
    seed: int = setting(0, type=int, help="Seed of the calibration window offsets.")
    batch_size: int | None = setting(None, name="--calib-batch-size", dest="calib_batch_size", type=int,
                                     help="Calibration samples per block call [default: as many as a quarter of the "
                                          "free memory holds].")

    def __post_init__(self) -> None:
        _refuse_blank(self.text, "--calib")
        if self.part not in ("train", "all"):
            raise TicketlabError(f"The calibration part must be train or all, not {self.part!r}.")
        if self.nsamples is not None:
            validate.integer(self.nsamples, "--nsamples", low=1, high=MAX_NSAMPLES)
        if self.seqlen is not None:
            validate.integer(self.seqlen, "--seqlen", low=2, high=1 << 20)
        validate.seed(self.seed, "--seed")
        if self.batch_size is not None:
            validate.integer(self.batch_size, "--calib-batch-size", low=1, high=4096)


def _refuse_blank(value: str | None, flag: str, *, optional: bool = True) -> None:
    """An empty path is never "the default" (None is): one sentence naming ``flag``."""
    if value is not None and not str(value).strip():
        rest = f", or leave {flag} out for the default" if optional else ""
        raise TicketlabError(f"{flag} is empty; give a path{rest}.")


#: The parts of an evaluation text: ``heldout`` (its last 10%, never calibrated or trained on) or ``all``.
EVAL_PARTS: tuple[str, ...] = ("heldout", "all")
#: The flag spelling and option key of the evaluation text and its part, shared by `EvaluationConfig`
#: (``llm prune``) and `ticketlab.llm.model_eval.ModelEvalConfig` (``llm eval``) so both commands take
#: the same flags; each field keeps its own default and help.
EVAL_TEXT_FLAG: dict[str, Any] = {"name": "--eval-text", "dest": "eval_text", "metavar": "PATH"}
EVAL_PART_FLAG: dict[str, Any] = {"name": "--eval-part", "dest": "eval_part", "choices": lambda: EVAL_PARTS}


def check_evaluation_settings(part: str, max_windows: int | None) -> None:
    """The checks every evaluation config shares: ``part`` one of `EVAL_PARTS`, ``max_windows``
    (None: all windows) from 1 to `MAX_NSAMPLES`; one sentence otherwise."""
    if part not in EVAL_PARTS:
        raise TicketlabError(f"The evaluation part must be heldout or all, not {part!r}.")
    if max_windows is not None:
        validate.integer(max_windows, "--max-windows", low=1, high=MAX_NSAMPLES)


@dataclass(frozen=True)
class EvaluationConfig:
    """Measure before and after pruning on ``text``'s ``part`` (``heldout``: the last 10%, or ``all``):
    perplexity for a causal LM (at most ``max_windows`` windows), embedding fidelity for an encoder."""

    text: str = setting(**EVAL_TEXT_FLAG,
                        help="Measure perplexity (causal LM) or embedding fidelity (encoder) before and after "
                             "pruning on this text.")
    part: str = setting("heldout", **EVAL_PART_FLAG,
                        help="Part of --eval-text to evaluate on: the last 10% (heldout) or all of it.")
    max_windows: int | None = setting(None, type=int, help="Evaluate on at most this many windows (causal LMs).")

    def __post_init__(self) -> None:
        _refuse_blank(self.text, "--eval-text")
        check_evaluation_settings(self.part, self.max_windows)


@dataclass(frozen=True)
class OneShotRun:
    """One complete one-shot pruning job.

    ``model``: a Hugging Face model directory (None: the embedded all-MiniLM-L6-v2); ``method``: what
    to do; ``out``: the new directory; ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``;
    ``dtype``: ``float32``, ``bfloat16`` or ``float16`` (None: the checkpoint's own dtype; statistics
    are always fp32).
    """

    method: OneShotConfig
    out: str = setting(metavar="DIR", required=True, help="New (or empty) directory for the pruned model.")
    model: str | None = setting(None, metavar="DIR",
                                help="Hugging Face model directory (default: the embedded all-MiniLM-L6-v2).")
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    evaluation: EvaluationConfig | None = None
    device: str = setting("auto", help="Where the blocks are processed: auto, cpu, cuda, cuda:N.")
    dtype: str | None = setting(None, choices=lambda: tuple(DTYPES),
                                help="Model dtype [default: the checkpoint's own]; statistics are always float32.")
    stream: bool = setting(False, is_flag=True, help="Stream the weights block by block from the safetensors shards "
                                                     "(models larger than memory).")

    def __post_init__(self) -> None:
        if not isinstance(self.method, OneShotConfig):
            raise TicketlabError("OneShotRun.method must be a OneShotConfig.")
        _refuse_blank(self.model, "--model")
        _refuse_blank(self.out, "--out", optional=False)
        if self.stream and self.evaluation is not None:
            raise TicketlabError("Evaluation needs the whole model in memory; with --stream, evaluate the output "
                                 "afterwards with ticketlab llm eval.")
        if self.stream and self.method.layer_sparsity == "owl":
            raise TicketlabError("OWL's dense pass over the model is not available with --stream yet; use the "
                                 "in-memory path or --layer-sparsity uniform.")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise TicketlabError(f"Unknown --dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}.")


@dataclass
class OneShotResult:
    """What `run_oneshot` did: the record written as ``pruning_report.json`` and the pruning report."""

    out: Path
    record: dict[str, Any]
    report: PruningReport
    kind: str


def default_nsamples(text_tokens: int, content: int) -> int:
    """Windows drawn by default: `DEFAULT_NSAMPLES`, but no more than the text holds without reuse
    (a 4,594-token text gives 9 windows of 510 tokens, not 128 windows each reusing it 14 times)."""
    return max(1, min(DEFAULT_NSAMPLES, text_tokens // max(1, content)))


def check_dtype(dtype: torch.dtype, device: torch.device) -> None:
    """A tiny matrix product and layer norm in ``dtype`` on ``device``: a clear sentence if unsupported."""
    try:
        x = torch.ones(4, 4, dtype=dtype, device=device)
        torch.nn.functional.layer_norm(x @ x, (4,))
    except (RuntimeError, TypeError):
        raise TicketlabError(f"The device {device} cannot compute in {str(dtype).removeprefix('torch.')}; "
                             "choose another --dtype.") from None


def _use_threads(threads: str | int | None, model: Any, run: OneShotRun, calibration: Any) -> None:
    """`use_threads` sized by one calibration block call; None leaves torch's threads as they are
    (a library caller that manages them itself)."""
    if threads is not None:
        use_threads(threads, _calibration_step_macs(model, run, calibration))


def _calibration_step_macs(model: Any, run: OneShotRun, calibration: Any) -> float:
    """The multiply-accumulates of one calibration forward of a batch (``--threads auto``'s size;
    the weights may be on the meta device: only their shapes count)."""
    return token_step_macs(model, calibration.seqlen * (run.calibration.batch_size or 8))


def run_oneshot(run: OneShotRun, *, progress: Progress | None = None,
                log: Callable[[str], None] | None = None, threads: str | int | None = None) -> OneShotResult:
    """Load, calibrate, evaluate, prune, evaluate and write ``run.out``; see the module docstring.

    ``threads``: torch's CPU threads (``"auto"``: from the model's size and the calibration
    tokens of one block call, `ticketlab.threads`; None: left as they are)."""
    from .engine import check_targets, prune_model
    from .evaluation import BeforeAfter
    from .io import check_out_dir, default_model_path, load_pretrained
    from .text import packaged_text, read_text

    from ..train import distributed as dist_helpers
    from .ranks import rank_checksums

    if threads is not None:
        resolve_threads(threads, 0.0)   # a bad --threads fails before the model loads
    main_process = dist_helpers.is_main_process()
    say = (log or (lambda text: None)) if main_process else (lambda text: None)
    progress = progress if main_process else None
    out = check_out_dir(run.out)
    device = dist_helpers.rank_device(resolve_device(run.device))
    calib_text = read_text(run.calibration.text) if run.calibration.text else packaged_text()
    eval_text = read_text(run.evaluation.text) if run.evaluation else None
    model_dir = Path(run.model) if run.model else default_model_path()
    dtype = _dtype_of(model_dir, run.dtype)
    check_dtype(dtype, device)
    if run.stream:
        return _run_streaming(run, out, model_dir, dtype, device, calib_text, progress, say, threads)
    loaded = load_pretrained(model_dir, dtype=dtype)
    check_targets(loaded.model, run.method)
    calibration = _calibration(run, loaded, calib_text)
    _use_threads(threads, loaded.model, run, calibration)
    say(f"ticketlab llm prune: {run.method.describe()} of {model_dir} ({loaded.kind}, {_name(dtype)}, {device}); "
        f"calibration {calibration.nsamples} x {calibration.seqlen} tokens from {calib_text.describe()}, "
        f"seed {run.calibration.seed}")
    evaluation = BeforeAfter(run.evaluation, loaded, eval_text, calibration.seqlen, progress)
    evaluation.before(say)
    block_sparsity, owl = _layer_sparsity(run, loaded.model, calibration.input_ids, device, say)
    report = prune_model(loaded.model, calibration.input_ids, run.method, device=device, progress=progress,
                         batch_size=run.calibration.batch_size, block_sparsity=block_sparsity)
    evaluation.after()
    record = _record(run, model_dir, loaded.kind, dtype, device, calibration, report, evaluation.record)
    if owl:
        record["owl"] = owl
    checksums = rank_checksums(loaded.model)
    if checksums is not None:
        record["rank_weight_checksums"] = checksums
    if main_process:
        _write(out, loaded, model_dir, report, record)
    return OneShotResult(out=out, record=record, report=report, kind=loaded.kind)


def _run_streaming(run: OneShotRun, out: Path, model_dir: Path, dtype: torch.dtype, device: torch.device,
                   calib_text: Any, progress: Any, say: Callable[[str], None],
                   threads: str | int | None = None) -> OneShotResult:
    """The streaming path (`ticketlab.llm.stream`): the model never sits in memory whole."""
    from ..files import atomic_directory, write_json
    from .adapters import find_blocks, find_targets
    from .engine import check_targets, prune_model
    from .io import (LoadedModel, check_config_fits, check_model_dir, copy_sentence_transformers_files,
                     kind_from_config, load_tokenizer, quiet_transformers)
    from .stream import ShardIndex, ShardLoader, build_skeleton, check_room_for_blocks

    return_freed_memory_promptly()
    check_model_dir(model_dir)
    index = ShardIndex(model_dir)
    skeleton_config = _config_of(model_dir)
    kind = kind_from_config(skeleton_config)
    check_config_fits(skeleton_config, kind, index.total_bytes(), repr(str(model_dir / "config.json")), dtype)
    model = build_skeleton(model_dir, kind, dtype)
    loaded = LoadedModel(model=model, tokenizer=load_tokenizer(model_dir), kind=kind, path=model_dir)
    check_targets(model, run.method)
    calibration = _calibration(run, loaded, calib_text)
    _use_threads(threads, model, run, calibration)   # as the in-memory path would
    blocks_path, blocks = find_blocks(model)
    largest_block = check_room_for_blocks(index, [f"{blocks_path}.{i}." for i in range(len(blocks))], dtype)
    last = max(t.block for t in find_targets(model, blocks_path, blocks, run.method.targets, run.method.exclude))
    say(f"ticketlab llm prune --stream: {run.method.describe()} of {model_dir} ({kind}, {_name(dtype)}, {device}), "
        f"{index.total_bytes() / 2**20:.0f} MiB of weights in {index.file_count()} file(s); "
        f"calibration {calibration.nsamples} x {calibration.seqlen} tokens")
    with atomic_directory(out) as tmp:
        loader = ShardLoader(model, index, blocks_path, len(blocks), tmp, dtype)
        loader.load_outside()
        resident_before_blocks = current_rss_bytes()
        report = prune_model(model, calibration.input_ids, run.method, device=device, progress=progress,
                             batch_size=run.calibration.batch_size, loader=loader)
        loader.copy_untouched(last + 1)
        loader.finish()
        with quiet_transformers():
            model.config.save_pretrained(str(tmp))
            loaded.tokenizer.save_pretrained(str(tmp))
        copy_sentence_transformers_files(model_dir, tmp)
        record = _record(run, model_dir, kind, dtype, device, calibration, report, {})
        record["streaming"] = {"model_bytes": index.total_bytes(), "peak_rss_bytes": peak_rss_bytes(),
                               "rss_before_blocks_bytes": resident_before_blocks, "largest_block_bytes": largest_block,
                               "output_shards": loader.total}
        report.masks.save(tmp / "masks.safetensors", metadata={"method": run.method.method, "model": str(model_dir)})
        write_json(tmp / "pruning_report.json", record)
    return OneShotResult(out=out, record=record, report=report, kind=kind)


def _config_of(model_dir: Path) -> Any:
    from .io import _transformers, quiet_transformers

    try:
        with quiet_transformers():
            return _transformers().AutoConfig.from_pretrained(str(model_dir), local_files_only=True,
                                                              trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - transformers raises many types for a broken config
        raise TicketlabError(f"Cannot read the config in {str(model_dir)!r} ({type(err).__name__}).") from None


def _layer_sparsity(run: OneShotRun, model: Any, calibration: torch.Tensor, device: torch.device,
                    say: Callable[[str], None]) -> tuple[dict[int, float] | None, dict[str, Any]]:
    """OWL's per-block sparsities (measured on the dense model), or None for uniform sparsity."""
    if run.method.layer_sparsity != "owl":
        return None, {}
    from .owl import owl_block_sparsity

    sparsity, ratios = owl_block_sparsity(model, calibration, run.method, device=device,
                                          batch_size=run.calibration.batch_size)
    say("OWL block sparsities: " + ", ".join(f"{b}: {100 * s:.1f}%" for b, s in sorted(sparsity.items())))
    return sparsity, {"threshold": run.method.owl_threshold, "lambda": run.method.owl_lambda,
                      "block_sparsity": {str(b): s for b, s in sorted(sparsity.items())},
                      "outlier_ratios": {str(b): r for b, r in sorted(ratios.items())}}


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_of(model_dir: Path, requested: str | None) -> torch.dtype:
    """The requested dtype, else the checkpoint's own (``torch_dtype`` / ``dtype`` in config.json)."""
    if requested is not None:
        return DTYPES[requested]
    from ..files import read_json

    config = read_json(model_dir / "config.json") if (model_dir / "config.json").is_file() else {}
    stored = config.get("dtype") or config.get("torch_dtype") if isinstance(config, dict) else None
    return DTYPES.get(str(stored), torch.float32)


def _calibration(run: OneShotRun, loaded: Any, text: Any) -> Any:
    from .text import build_calibration, resolve_seqlen, tokenize

    seqlen = resolve_seqlen(loaded.model, run.calibration.seqlen)
    nsamples = run.calibration.nsamples
    if nsamples is None:
        tokens = tokenize(loaded.tokenizer, text.part(run.calibration.part)).numel()
        nsamples = default_nsamples(tokens, seqlen - (2 if loaded.kind == "encoder" else 0))
    return build_calibration(loaded.tokenizer, text, nsamples=nsamples, seqlen=seqlen, seed=run.calibration.seed,
                             part=run.calibration.part, wrap_special=loaded.kind == "encoder")


def _record(run: OneShotRun, model_dir: Path, kind: str, dtype: torch.dtype, device: torch.device, calibration: Any,
            report: PruningReport, evaluation: dict[str, Any]) -> dict[str, Any]:
    config = {k: json_value(v) for k, v in vars(run.method).items()}
    record = {"model": str(model_dir), "model_kind": kind, "config": config, "dtype": _name(dtype),
              "calibration": {**calibration.to_json(),
                              "reuse": calibration.nsamples * calibration.seqlen / max(1, calibration.text_tokens)},
              "device": str(device), **report.to_json()}
    if evaluation:
        record["evaluation"] = evaluation
    return record


def _write(out: Path, loaded: Any, model_dir: Path, report: PruningReport, record: dict[str, Any]) -> None:
    from ..files import write_json
    from ..files import atomic_directory
    from .io import copy_sentence_transformers_files, save_pretrained

    with atomic_directory(out) as tmp:
        save_pretrained(loaded.model, loaded.tokenizer, tmp)
        copy_sentence_transformers_files(model_dir, tmp)
        report.masks.save(tmp / "masks.safetensors", metadata={"method": record["config"]["method"],
                                                               "model": str(model_dir)})
        write_json(tmp / "pruning_report.json", record)


__all__ = ["CalibrationConfig", "DEFAULT_NSAMPLES", "DTYPES", "EvaluationConfig", "OneShotResult", "OneShotRun",
           "default_nsamples", "run_oneshot"]
