"""User-facing errors.

Every failure a user can cause (a bad flag, a missing file, an invalid sparsity) raises a
`TicketlabError` whose message is one clear sentence. The command line turns it into that sentence
on stderr and exit code 2; library users can catch it like any `ValueError`.
"""


class TicketlabError(ValueError):
    """A problem with the user's input or files, explained in one sentence."""
