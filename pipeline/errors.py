"""Errors a user can fix. The CLI prints them as one paragraph, without a traceback."""


class UserError(Exception):
    """Bad input, path or configuration: the message says what, where, and how to fix it."""


class IntegrityError(Exception):
    """The pipeline's own checks failed (e.g. rows lost between input and output).

    Not the user's fault, but it must stop the run loudly rather than let a
    partial dataset through.
    """
