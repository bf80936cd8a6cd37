"""User-facing errors.

Every failure a user can cause (a bad flag, a missing file, an invalid sparsity) raises a
`TicketlabError` whose message is one clear sentence. The command line turns it into that sentence
on stderr and exit code 2; library users can catch it like any `ValueError`.
"""


class TicketlabError(ValueError):
    """A problem with the user's input or files, explained in one sentence."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an error's message (at most 200 characters, no closing full
    stop), so that a foreign exception fits inside one of ticketlab's one-sentence messages."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0][:200].rstrip(".") if lines else "no details"


__all__ = ["TicketlabError", "first_line"]
