"""Errors a user can fix. The CLI prints them as one paragraph, without a traceback."""
import errno
import sys
import textwrap


class UserError(Exception):
    """Bad input, path or configuration: the message says what, where, and how to fix it."""


class IntegrityError(Exception):
    """The pipeline's own checks failed (e.g. rows lost between input and output).

    Not the user's fault, but it must stop the run loudly rather than let a
    partial dataset through.
    """


# Failures of the machine rather than of the code, as the OS words them. Beam and TensorFlow
# re-raise them as their own exception types, so they are recognised by their words too; ML
# Metadata passes on SQLite's own words, which carry no errno (keyed by name).
_DISK_ERRORS = {
    errno.ENOSPC: ("No space left on device", "free space there"),
    errno.EDQUOT: ("Disk quota exceeded", "free space there or raise the quota"),
    errno.EROFS: ("Read-only file system", "make it writable"),
    errno.EACCES: ("Permission denied", "give this user write access"),
    errno.EPERM: ("Operation not permitted", "give this user write access"),
    "SQLITE_FULL": ("database or disk is full", "free space there"),
    "SQLITE_READONLY": ("attempt to write a readonly database",
                        "give this user write access to the metadata store and its folder"),
    "SQLITE_CANTOPEN": ("unable to open database file",
                        "give this user read and write access to the metadata store and its "
                        "folder"),
}


def disk_error(e: BaseException, where: str) -> UserError | None:
    """A UserError for a full, read-only or forbidden disk behind `e` (its first cause that
    names one), else None. `where` names the folders the run writes to."""
    chain = []
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for cause in reversed(chain):  # the original error first: later ones may only echo it
        for code, (words, fix) in _DISK_ERRORS.items():
            text = str(cause)
            if getattr(cause, "errno", None) == code or words in text:
                line = next((s for s in text.splitlines() if words in s), text.strip())
                at = max(line.find(words), 0)
                end = line.find(" query:", at)  # ML Metadata's SQL after SQLite's words
                detail = ("..." if at > 150 else "") + line[max(at - 150, 0):min(
                    at + 150, end if end > 0 else len(line))].strip()
                return UserError(
                    f"The run stopped: {words.lower()} ({detail}). It writes to {where}: {fix}, "
                    f"then run again. Finished steps are reused, the unfinished one starts over, "
                    f"and the serving directory was not changed.")
    return None


def report_error(e: Exception) -> int:
    """Print the error as one paragraph on stderr; the exit code: 2 for the user's, 3 for ours."""
    print(textwrap.fill(f"error: {e}", width=100, break_on_hyphens=False,
                        break_long_words=False), file=sys.stderr)
    return 3 if isinstance(e, IntegrityError) else 2
