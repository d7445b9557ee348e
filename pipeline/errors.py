"""Errors a user can fix. The CLI prints them as one paragraph, without a traceback."""
import sys
import textwrap


class UserError(Exception):
    """Bad input, path or configuration: the message says what, where, and how to fix it."""


class IntegrityError(Exception):
    """The pipeline's own checks failed (e.g. rows lost between input and output).

    Not the user's fault, but it must stop the run loudly rather than let a
    partial dataset through.
    """


def report_error(e: Exception) -> int:
    """Print the error as one paragraph on stderr; the exit code: 2 for the user's, 3 for ours."""
    print(textwrap.fill(f"error: {e}", width=100, break_on_hyphens=False,
                        break_long_words=False), file=sys.stderr)
    return 3 if isinstance(e, IntegrityError) else 2
