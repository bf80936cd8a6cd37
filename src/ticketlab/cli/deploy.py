"""``ticketlab export`` and ``ticketlab bench``: smaller files and faster models from what was found."""

from __future__ import annotations

from pathlib import Path

import click

from .. import validate
from ..errors import TicketlabError
from ..flags import ints_parser
from .common import trust_typed_code, user_code_options
from .options import INT, refuse_empty_values


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


@click.command("export")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--out", required=True, metavar="DIR", help="New (or empty) directory to write.")
@click.option("--seed", default=None, type=INT, help="With a run directory: the seed (default: its first).")
@click.option("--round", "round_index", default=None, type=INT,
              help="With a run directory: the round (IMP; default: the sparsest winning ticket) or the density "
                   "index (prune-init / sparse-train; default: the smallest density).")
@click.option("--format", "fmt", default="compact", show_default=True,
              type=click.Choice(["compact", "hf", "onnx", "pt"]),
              help="compact: bitmask / N:M encoded weights for ticketlab.deploy.load (compacted networks and "
                   "transformers with blocks of different widths included); hf: a plain Hugging Face directory "
                   "that transformers and sentence-transformers load alone; onnx: model.onnx of the compacted "
                   "network, checked with onnxruntime; pt: model.pt2 (torch.export). onnx and pt also hold the "
                   "compact weights.")
@click.option("--no-compaction", is_flag=True, help="Keep every hidden unit (vision models).")
@user_code_options("--model")
def export(src: Path, out: str, seed: int | None, round_index: int | None, fmt: str, no_compaction: bool,
           user_model: str | None) -> None:
    """Export a ticket (a round of a run, or a run directory) or a pruned HF model as a smaller directory.

    SRC is runs/X/seed-0/round-10, a run directory (with --seed / --round), or a directory written by
    ticketlab llm prune. The result rebuilds the model without the run: ticketlab.deploy.load(OUT).
    """
    from ..deploy import export as export_model

    trust_typed_code(user_model)
    if seed is not None:
        validate.seed(seed, "--seed")
    if round_index is not None:
        validate.integer(round_index, "--round", low=0, high=10_000)
    record = export_model(src, out, seed=seed, round_index=round_index, fmt=fmt, compact=not no_compaction)
    sizes = record["sizes"]
    click.echo(f"exported {record['source']['description']}")
    compaction = record.get("compaction") or {}
    if compaction.get("removed_units"):
        widths = ", ".join(f"{name} {compaction['widths_before'][name]} -> {after}"
                           for name, after in compaction["widths_after"].items())
        click.echo(f"compacted: removed {compaction['removed_units']} dead units ({widths})")
    untouched = compaction.get("not_compacted") or {}
    if untouched:
        click.echo("left at full width: " + "; ".join(f"{name} ({why})" for name, why in untouched.items()))
    kept = compaction.get("kept_constant_units") or {}
    if kept:
        click.echo("kept constant units that feed a padded convolution (no bias can replace them): "
                   + ", ".join(f"{name} {count}" for name, count in kept.items()))
    if fmt != "hf":
        line = (f"weights: {_format_bytes(sizes['compact_file'])} vs {_format_bytes(sizes['dense_file'])} dense "
                f"({sizes['file_ratio']:.3f}x)")
        if sizes["dense_pruned_tensors"]:
            line += f"; pruned tensors {sizes['pruned_tensor_ratio']:.3f}x their dense size"
        click.echo(line)
    program = record.get("program")
    if program:
        check = program["check"]
        click.echo(f"{program['file']}: {_format_bytes(program['bytes'])}, outputs within "
                   f"{check['max_relative_difference']:.1e} of the masked model's ({check['runtime']}; tolerance "
                   f"{check['tolerance']:g})")
    click.echo(f"wrote {out}")


@click.command("bench")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--batch-sizes", default="1,8,64", show_default=True, help="Comma list of batch sizes.")
@click.option("--threads", default=None, type=INT, help="CPU threads (default: torch's default for this machine).")
@click.option("--repeats", default=20, show_default=True, type=INT, help="Alternated rounds per measurement.")
@click.option("--seqlen", default=64, show_default=True, type=INT,
              help="Tokens per sequence (transformers; at most the model's context length).")
@click.option("--tokens", default="128,1024", show_default=True,
              help="Compacted transformers: sequence lengths timed dense against compacted (at most the context).")
@click.option("--decode-tokens", default=32, show_default=True, type=INT,
              help="Compacted causal LMs: tokens decoded greedily with the KV cache (tokens/s).")
@click.option("--no-onnx", is_flag=True, help="Compacted models: skip the onnxruntime timings.")
@click.option("--no-memory", is_flag=True, help="Skip the peak-memory measurement (two child processes).")
@click.option("--out", default=None, metavar="DIR", help="Where bench.json and bench.png go (default: MODEL_DIR).")
@user_code_options("--model")
def bench(model_dir: Path, device: str, batch_sizes: str, threads: int | None, repeats: int, seqlen: int,
          tokens: str, decode_tokens: int, no_onnx: bool, no_memory: bool, out: str | None,
          user_model: str | None) -> None:
    """Time an exported model, dense against deployed, on this machine; write bench.json and bench.png.

    A compacted export (channel tickets, transformers with heads / MLP channels removed) is also timed
    at its original width against compacted, on torch and onnxruntime, with the MACs each removes."""
    from ..deploy.bench import bench as run_bench, check_batch_sizes, format_bench, write_outputs
    from ..deploy.kernels import kernel_status
    from ..devices import resolve_device
    from ..outputs import check_bench_outputs

    refuse_empty_values()
    trust_typed_code(user_model)
    resolve_device(device, allow_auto=False)
    sizes = check_batch_sizes(ints_parser("--batch-sizes")(batch_sizes))
    if threads is not None:
        validate.integer(threads, "--threads", low=1, high=4096)
    validate.integer(repeats, "--repeats", low=3, high=10_000)
    validate.integer(seqlen, "--seqlen", low=1, high=1 << 20)
    lengths = ints_parser("--tokens")(tokens)
    if not lengths or any(t < 1 or t > 1 << 20 for t in lengths):
        raise TicketlabError("--tokens needs positive sequence lengths up to 1048576, e.g. 128,1024.")
    validate.integer(decode_tokens, "--decode-tokens", low=1, high=1 << 16)
    check_bench_outputs(Path(out) if out else model_dir)
    status = kernel_status()
    if not status["available"] and device == "cpu":
        click.echo(f"note: {status['reason']}; using torch's sparse and dense kernels only.", err=True)
    result = run_bench(model_dir, batch_sizes=sizes, device=device, threads=threads, repeats=repeats, seqlen=seqlen,
                       memory=not no_memory, tokens=tuple(lengths), decode_tokens=decode_tokens, onnx=not no_onnx)
    json_path, png = write_outputs(result, Path(out) if out else model_dir)
    click.echo(format_bench(result))
    click.echo(f"\nWrote {json_path} and {png}.")
