"""The exit codes scripts rely on (listed for users in `extproc.ctl.main`'s help) and the
error that carries one to `main`, which prints it as one line on stderr."""

from __future__ import annotations

from extproc.errors import TokengateError

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_UNREACHABLE = 4
EXIT_INTERRUPTED = 130  # what a shell reports for a command ended by Ctrl-C (128 + SIGINT)


class CtlError(TokengateError):
    """A failure reported as one line on stderr, with the exit code scripts rely on."""

    def __init__(self, message: str, *, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
