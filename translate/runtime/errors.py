"""How a command ends: one line for a mistake the user can fix, and a documented exit code for each way to stop.

    0    done
    1    an unexpected failure (a bug): the traceback is printed
    2    a mistake the user can fix — a setting, a file, a checkpoint, a busy run directory, a full disk:
         one line `error: …` naming the key or file and the fix, no traceback
    3    translate: some input lines could not be translated (their output lines are empty; the others are there)
    130  training stopped by SIGINT (Ctrl-C), 143 by SIGTERM: `last.pt` saved, the resume command printed
         (128 + the signal's number, as shells report it)

`HYDRA_FULL_ERROR=1` (Hydra's own switch) shows the traceback of a user error too.
"""

import errno
import functools
import os
import sys

EXIT_USER_ERROR = 2
EXIT_SOME_LINES_FAILED = 3


class UserError(Exception):
    """A mistake the user can fix; the message names the file, line or key and the fix."""


class ConfigError(UserError, ValueError):
    """A setting out of its range or not one of its choices."""


# errors of writing and reading that a user fixes outside the program
OS_HINTS = {
    errno.EFBIG: "a file-size limit stops the write (ulimit -f); raise it or write elsewhere",
    errno.ENOSPC: "the disk is full; free space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up; free space or write elsewhere",
    errno.EACCES: "no permission; choose a directory you can write to",
    errno.EPERM: "no permission; choose a directory you can write to",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.ENOENT: "no such file or directory; check the path",
}


def explain_os_error(e: OSError) -> str | None:
    """`<file>: <reason>; <fix>` for an OSError a user can fix, else None."""
    hint = OS_HINTS.get(e.errno)
    if hint is None:
        return None
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or os.strerror(e.errno)}; {hint}"


def fail(message: str, code: int = EXIT_USER_ERROR):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def one_line_errors(main):
    """Wrap a command's main: a UserError or a fixable OSError ends the process with one line and exit code 2."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            fail(str(e))
        except OSError as e:
            message = explain_os_error(e)
            if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            fail(message)

    return wrapped
