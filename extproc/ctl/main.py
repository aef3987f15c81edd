"""tokengate ctl: see and steer a running gateway through its control API.

Commands:
  usage NAMESPACE [--key NAME]          per limit: used, limit, remaining, reset
  top [--window 1m|1h|1d] [--measure tokens|requests|usd] [--count N]
                                        the callers that spent the most
  policy show                           the policy snapshot in force, last reload error
  policy validate FILE... [--remote]    check policy files (locally, offline, with the
                                        server's own validator; --remote asks the server)
  override NAMESPACE [--key NAME] (--block | --extra LIMIT=AMOUNT) --ttl DURATION --reason TEXT
                                        block a caller, or give one limit extra quota, for a
                                        while (AMOUNT in the limit's unit; '$2.50' for usd)
  reset NAMESPACE [--key NAME] --reason TEXT
                                        reset a caller's counters
  backends                              model routes' backends: breaker state, headroom
  queue                                 shared capacities: who waits, by class, and limits
  events [--kind KIND ...] [--count N]  live enforcement events, one per line

Global options (before or after the command): --server HOST:PORT, --token-file PATH,
--output table|json, --timeout SECONDS (every call but `events` is bounded by it).

Output: tables for people; `--output json` prints one JSON document (`events`: one JSON
object per line) with the proto's snake_case field names, every field present, usd amounts
in micro-dollars. Errors go to stderr as one line: `tokengate ctl: <message>`.

Exit codes:
  0  success
  1  the server refused (invalid argument, not found, failed precondition, …) or a policy
     file is invalid
  2  usage error (bad flags)
  3  authentication failed (no token, wrong token, unreadable token file)
  4  control API unreachable or unavailable (connection refused, timeout)

Environment: TOKENGATE_CONTROL_SERVER (default 127.0.0.1:50052), TOKENGATE_CONTROL_TOKEN_FILE
(a file holding the bearer token, e.g. a mounted Secret), TOKENGATE_CONTROL_TOKEN (the token
itself; used when no token file is given).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from extproc.ctl.arguments import build_parser
from extproc.ctl.exits import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CtlError

# Where the rest lives: arguments.py (the command line), commands.py (one function per
# command), connection.py (token, channel, gRPC failures), output.py (what is printed),
# exits.py (the exit codes above and `CtlError`).


def parser() -> argparse.ArgumentParser:
    """The command line, with this module's docstring as its help."""
    return build_parser(description=__doc__ or "")


def main(argv: Sequence[str]) -> int:
    """Run one ctl command; returns the exit code (see the module docstring)."""
    try:
        args = parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        code: int = args.run(args)
    except CtlError as exc:
        sys.stderr.write(f"tokengate ctl: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("tokengate ctl: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `tokengate ctl events | head -1`: the reader is gone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
