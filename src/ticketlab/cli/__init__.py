"""The ``ticketlab`` command line: parses flags into the library's config objects and prints.

One module per family of commands (`lottery`: imp, mask, models, datasets; `report`: report; `sparse`:
prune-init, sparse-train, compare; `masks`: masks compare; `stability`: stability); this module
only builds the group and turns every user-facing failure into one sentence on stderr and exit
code 2. No algorithm lives in the CLI.
"""

from __future__ import annotations

import sys

import click

from ..errors import TicketlabError, first_line
from . import deploy, llm, lottery, masks, recipes, report, sparse, stability

EXIT_USAGE = 2


EXIT_UNEXPECTED = 1
#: Flags renamed for one vocabulary (--density wherever what is kept is given; --sparsity only
#: for the LLM commands): old spelling -> (new spelling, one-sentence hint). The hint replaces
#: click's "no such option" only where the failing command has the new spelling (`_renamed_hint`).
OLD_SPELLINGS: dict[str, tuple[str, str]] = {
    "--densities": ("--density", "--densities is now --density (a comma list of the fractions of weights kept)."),
    "--imp-rate": ("--rate", "--imp-rate is now --rate (IMP's pruning rate per round, as in `ticketlab imp`)."),
    "--target-density": ("--density", "--target-density is now --density (the fraction of weights kept after "
                                      "the last round)."),
    "--part": ("--eval-part", "--part is now --eval-part (as in `ticketlab llm prune`)."),
    "--text": ("--eval-text", "--text is now --eval-text here (as in `ticketlab llm prune`)."),
}
_debug = {"on": False}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             invoke_without_command=True)
@click.version_option(package_name="ticketlab")
@click.option("--debug", is_flag=True, help="Show the full traceback of an unexpected error.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """ticketlab: find, test and deploy sparse subnetworks (lottery tickets) of neural networks.

    Start with `ticketlab imp` (lottery tickets on real MNIST digits, a few minutes on a CPU).
    """
    _debug["on"] = debug
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


for _command in (lottery.imp, sparse.prune_init, sparse.sparse_train, sparse.compare, report.report,
                 lottery.mask_info, deploy.export, deploy.bench, lottery.models, lottery.datasets, recipes.recipes):
    cli.add_command(_command)
cli.add_command(llm.llm)
cli.add_command(masks.masks)
cli.add_command(stability.stability)


def _renamed_hint(err: click.ClickException) -> str | None:
    """The `OLD_SPELLINGS` hint for an unknown option, only if the failing command takes the new
    spelling: ``imp --text`` must not be told about an --eval-text that imp does not have."""
    if not isinstance(err, click.NoSuchOption) or err.option_name not in OLD_SPELLINGS or err.ctx is None:
        return None
    new, hint = OLD_SPELLINGS[err.option_name]
    taken = {opt for param in err.ctx.command.params for opt in param.opts}
    return hint if new in taken else None


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning user errors into one sentence and exit code 2.

    Anything unexpected is one sentence too (exit code 1) naming the error, with a hint to rerun
    with ``--debug``, which re-raises it with its full traceback.
    """
    _debug["on"] = False
    try:
        cli.main(args=argv, prog_name="ticketlab", standalone_mode=False)
    except TicketlabError as err:
        click.echo(f"ticketlab: error: {err}", err=True)
        return EXIT_USAGE
    except click.ClickException as err:
        message = " ".join(line.strip() for line in err.format_message().splitlines() if line.strip())
        click.echo(f"ticketlab: error: {_renamed_hint(err) or message}", err=True)
        return EXIT_USAGE
    except OSError as err:  # a file the library did not anticipate: still one sentence, no traceback
        if _debug["on"]:
            raise
        where = f" ({err.filename})" if err.filename else ""
        click.echo(f"ticketlab: error: {err.strerror or first_line(err)}{where}.", err=True)
        return EXIT_USAGE
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("ticketlab: interrupted; run the same command again to resume.", err=True)
        return 130
    except Exception as err:  # noqa: BLE001 - the last line of defence: one sentence, never a traceback
        if _debug["on"]:
            raise
        click.echo(f"ticketlab: error: unexpected {type(err).__name__}: {first_line(err)}; "
                   "rerun with ticketlab --debug ... for the traceback.", err=True)
        return EXIT_UNEXPECTED
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
