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
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc

from extproc.control import control_pb2 as pb
from extproc.control import control_pb2_grpc
from extproc.ctl import output as out
from extproc.errors import PolicyError

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_UNREACHABLE = 4

DEFAULT_SERVER = "127.0.0.1:50052"

_AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
_UNREACHABLE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}

Req = TypeVar("Req")
Resp = TypeVar("Resp")
EVENT_KINDS = (
    "refusal", "cut", "store_down", "store_up", "reload", "reload_error", "override", "reset",
)  # fmt: skip


class CtlError(Exception):
    """A failure reported as one line on stderr, with the exit code scripts rely on."""

    def __init__(self, message: str, *, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ControlApi(Protocol):
    """The typed face of the generated `ControlStub`."""

    GetUsage: grpc.UnaryUnaryMultiCallable[pb.GetUsageRequest, pb.GetUsageResponse]
    TopConsumers: grpc.UnaryUnaryMultiCallable[pb.TopConsumersRequest, pb.TopConsumersResponse]
    GetPolicy: grpc.UnaryUnaryMultiCallable[pb.GetPolicyRequest, pb.GetPolicyResponse]
    ValidatePolicy: grpc.UnaryUnaryMultiCallable[
        pb.ValidatePolicyRequest, pb.ValidatePolicyResponse
    ]
    SetOverride: grpc.UnaryUnaryMultiCallable[pb.SetOverrideRequest, pb.SetOverrideResponse]
    ResetUsage: grpc.UnaryUnaryMultiCallable[pb.ResetUsageRequest, pb.ResetUsageResponse]
    WatchEvents: grpc.UnaryStreamMultiCallable[pb.WatchEventsRequest, pb.Event]


@dataclass(frozen=True, slots=True)
class Connection:
    """A stub plus what every call carries: the bearer token and the deadline."""

    api: ControlApi
    server: str
    metadata: grpc.Metadata
    timeout_s: float

    def call(self, method: grpc.UnaryUnaryMultiCallable[Req, Resp], request: Req) -> Resp:
        with self.translating():
            return method(request, timeout=self.timeout_s, metadata=self.metadata)

    @contextmanager
    def translating(self) -> Iterator[None]:
        """gRPC failures become a `CtlError` with the exit code of their class."""
        try:
            yield
        except grpc.RpcError as exc:
            raise rpc_failure(
                exc, server=self.server, timeout_s=self.timeout_s, sent_token=bool(self.metadata)
            ) from exc


def rpc_failure(exc: grpc.RpcError, *, server: str, timeout_s: float, sent_token: bool) -> CtlError:
    code = exc.code()
    details = " ".join((exc.details() or code.name.lower()).split())
    if code in _AUTH_CODES:
        hint = "" if sent_token else " (no token: use --token-file or TOKENGATE_CONTROL_TOKEN)"
        return CtlError(f"authentication failed: {details}{hint}", exit_code=EXIT_AUTH)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"the control API at {server} did not answer within {timeout_s:g}s"
        return CtlError(message, exit_code=EXIT_UNREACHABLE)
    if code in _UNREACHABLE_CODES:
        message = f"the control API at {server} is unavailable: {details}"
        return CtlError(message, exit_code=EXIT_UNREACHABLE)
    return CtlError(f"{details} ({code.name})", exit_code=EXIT_REFUSED)


def _token(args: argparse.Namespace) -> str | None:
    """--token-file (or TOKENGATE_CONTROL_TOKEN_FILE) first, else TOKENGATE_CONTROL_TOKEN."""
    source = "env TOKENGATE_CONTROL_TOKEN"
    token = os.environ.get("TOKENGATE_CONTROL_TOKEN", "").strip()
    if args.token_file:
        source = f"token file {args.token_file}"
        try:
            with open(args.token_file, encoding="utf-8") as fh:
                token = fh.read(65536).strip()
        except (OSError, UnicodeDecodeError) as exc:
            problem = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise CtlError(f"cannot read {source}: {problem}", exit_code=EXIT_AUTH) from exc
        if not token:
            raise CtlError(f"{source} is empty", exit_code=EXIT_AUTH)
    if any(not "!" <= char <= "~" for char in token):  # what a header value can carry
        message = f"the token in {source} has spaces or non-ASCII characters"
        raise CtlError(message, exit_code=EXIT_AUTH)
    return token or None


@contextmanager
def _connect(args: argparse.Namespace) -> Iterator[Connection]:
    token = _token(args)
    metadata: grpc.Metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(args.server) as channel:
        make: Callable[[grpc.Channel], ControlApi] = control_pb2_grpc.ControlStub
        yield Connection(
            api=make(channel), server=args.server, metadata=metadata, timeout_s=args.timeout
        )


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _caller(args: argparse.Namespace) -> pb.Caller:
    return pb.Caller(namespace=args.namespace, key=args.key or "")


def _print(args: argparse.Namespace, message: Any, table: str) -> None:
    _write(out.json_document(out.to_json(message)) if args.output == "json" else table)


# --- commands -------------------------------------------------------------------------


def _cmd_usage(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        response = conn.call(conn.api.GetUsage, pb.GetUsageRequest(caller=_caller(args)))
    _print(args, response, out.usage_table(response))
    if not response.store_up:
        sys.stderr.write("tokengate ctl: warning: the quota store is down; usage may be stale\n")
    return EXIT_OK


def _cmd_top(args: argparse.Namespace) -> int:
    request = pb.TopConsumersRequest(window=args.window, measure=args.measure, count=args.count)
    with _connect(args) as conn:
        response = conn.call(conn.api.TopConsumers, request)
    _print(args, response, out.top_table(response))
    return EXIT_OK


def _cmd_policy_show(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        response = conn.call(conn.api.GetPolicy, pb.GetPolicyRequest())
    _print(args, response, out.policy_text(response))
    return EXIT_OK


def _validate_remote(conn: Connection, path: str) -> out.FileResult:
    try:
        content = out.read_policy(path)
    except PolicyError as exc:
        return out.invalid(exc)
    request = pb.ValidatePolicyRequest(file=path, content=content)
    return out.FileResult(file=path, result=conn.call(conn.api.ValidatePolicy, request))


def _cmd_policy_validate(args: argparse.Namespace) -> int:
    if args.remote:
        with _connect(args) as conn:
            results = [_validate_remote(conn, path) for path in args.files]
    else:
        results = out.validate_files(args.files)
    if args.output == "json":
        _write(out.json_document(out.validation_json(results)))
    else:
        _write(out.validation_text(results))
    bad = sum(1 for item in results if not item.result.valid)
    if bad:
        sys.stderr.write(f"tokengate ctl: {bad} of {len(results)} policy files invalid\n")
        return EXIT_REFUSED
    return EXIT_OK


def _cmd_override(args: argparse.Namespace) -> int:
    request = pb.SetOverrideRequest(caller=_caller(args), ttl_seconds=args.ttl, reason=args.reason)
    extra: out.Extra | None = args.extra
    if extra is None:
        request.kind = pb.SetOverrideRequest.BLOCK
    else:
        request.kind = pb.SetOverrideRequest.EXTRA_QUOTA
        request.limit, request.amount = extra.limit, extra.amount
    with _connect(args) as conn:
        response = conn.call(conn.api.SetOverride, request)
    unit = extra.unit if extra else ""
    _print(args, response, out.override_text(request, response, now=time.time(), unit=unit))
    return EXIT_OK


def _cmd_reset(args: argparse.Namespace) -> int:
    request = pb.ResetUsageRequest(caller=_caller(args), reason=args.reason)
    with _connect(args) as conn:
        response = conn.call(conn.api.ResetUsage, request)
    _print(args, response, out.reset_text(request, response))
    return EXIT_OK


def _cmd_events(args: argparse.Namespace) -> int:
    """The stream has no deadline (it is a live tail); `--count N` ends it after N events."""
    with _connect(args) as conn:
        stream = conn.api.WatchEvents(
            pb.WatchEventsRequest(kinds=args.kind), metadata=conn.metadata
        )
        seen = 0
        try:
            with conn.translating():
                for event in stream:
                    is_json = args.output == "json"
                    _write(out.json_line(out.to_json(event)) if is_json else out.event_line(event))
                    seen += 1
                    if seen == args.count:
                        return EXIT_OK
        except KeyboardInterrupt:  # closing the channel cancels the stream
            return EXIT_OK
    raise CtlError("the server closed the event stream", exit_code=EXIT_UNREACHABLE)


# --- arguments --------------------------------------------------------------------------


def _typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse `type` whose ValueError message becomes argparse's own error (exit 2)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _global_options(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """The same options on the top parser (real defaults) and on every command (SUPPRESS,
    so that `ctl usage x --output json` and `ctl --output json usage x` both work)."""
    parser.add_argument(
        "--server", type=_typed(out.parse_nonblank), default=defaults["server"],
        metavar="HOST:PORT",
        help=f"control API address (env TOKENGATE_CONTROL_SERVER, default {DEFAULT_SERVER})",
    )  # fmt: skip
    parser.add_argument(
        "--token-file", default=defaults["token_file"], metavar="PATH",
        help="file holding the bearer token (env TOKENGATE_CONTROL_TOKEN_FILE; "
        "else the token itself from env TOKENGATE_CONTROL_TOKEN)",
    )  # fmt: skip
    parser.add_argument(
        "--output", "-o", choices=("table", "json"), default=defaults["output"],
        help="table (default) or json",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=_typed(out.parse_seconds), default=defaults["timeout"],
        metavar="SECONDS", help="deadline of each call (default 10)",
    )  # fmt: skip


def _caller_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("namespace", type=_typed(out.parse_nonblank), metavar="NAMESPACE")
    parser.add_argument("--key", default="", metavar="NAME", help="one gateway key (ApiKey name)")


def _parser() -> argparse.ArgumentParser:
    top_defaults = {
        "server": os.environ.get("TOKENGATE_CONTROL_SERVER") or DEFAULT_SERVER,
        "token_file": os.environ.get("TOKENGATE_CONTROL_TOKEN_FILE") or "",
        "output": "table",
        "timeout": 10.0,
    }
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, dict.fromkeys(top_defaults, argparse.SUPPRESS))
    parser = argparse.ArgumentParser(
        prog="tokengate ctl", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _global_options(parser, top_defaults)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        group: Any, name: str, run: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=help_text)
        sub.set_defaults(run=run)
        return sub

    usage = command(commands, "usage", _cmd_usage, "usage of a namespace or key, per limit")
    _caller_arguments(usage)
    top = command(commands, "top", _cmd_top, "the callers that spent the most")
    top.add_argument("--window", choices=("1m", "1h", "1d"), default="1h")
    top.add_argument("--measure", choices=("tokens", "requests", "usd"), default="tokens")
    top.add_argument("--count", type=_typed(out.parse_count), default=10, metavar="N")
    policy = commands.add_parser("policy", help="show or validate policies")
    policies = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    command(policies, "show", _cmd_policy_show, "the policy snapshot in force")
    validate = command(policies, "validate", _cmd_policy_validate, "check policy files")
    validate.add_argument("files", nargs="+", metavar="FILE", help="policy file ('-': stdin)")
    validate.add_argument(
        "--remote", action="store_true", help="ask the server instead of validating locally"
    )
    override = command(commands, "override", _cmd_override, "block or give extra quota")
    _caller_arguments(override)
    what = override.add_mutually_exclusive_group(required=True)
    what.add_argument("--block", action="store_true", help="refuse every request")
    what.add_argument(
        "--extra", type=_typed(out.parse_extra), metavar="LIMIT=AMOUNT",
        help="raise one limit by AMOUNT (its unit; '$2.50' for usd limits)",
    )  # fmt: skip
    override.add_argument(
        "--ttl", type=_typed(out.parse_duration), required=True, metavar="DURATION",
        help="how long it lasts: 30s, 15m, 2h, 1d",
    )  # fmt: skip
    override.add_argument(
        "--reason", type=_typed(out.parse_nonblank), required=True, metavar="TEXT"
    )
    reset = command(commands, "reset", _cmd_reset, "reset a caller's counters")
    _caller_arguments(reset)
    reset.add_argument("--reason", type=_typed(out.parse_nonblank), required=True, metavar="TEXT")
    events = command(commands, "events", _cmd_events, "live enforcement events")
    events.add_argument(
        "--kind", action="append", choices=EVENT_KINDS, default=[],
        help="only these kinds (repeatable; default: all)",
    )  # fmt: skip
    events.add_argument(
        "--count", type=_typed(out.parse_count), default=0, metavar="N", help="stop after N"
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """Run one ctl command; returns the exit code (see the module docstring)."""
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        code: int = args.run(args)
    except CtlError as exc:
        sys.stderr.write(f"tokengate ctl: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("tokengate ctl: interrupted\n")
        return 130
    except BrokenPipeError:  # `tokengate ctl events | head -1`: the reader is gone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
