"""One function per `tokengate ctl` command: build the request, call the control API, print
the answer as a table or JSON (see `extproc.ctl.output`), return the exit code."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from extproc.control import control_pb2 as pb
from extproc.ctl import output as out
from extproc.ctl.connection import Connection, connect
from extproc.ctl.exits import EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, CtlError
from extproc.ctl.values import Extra
from extproc.errors import PolicyError


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _caller(args: argparse.Namespace) -> pb.Caller:
    return pb.Caller(namespace=args.namespace, key=args.key or "")


def _print(args: argparse.Namespace, message: Any, table: str) -> None:
    _write(out.json_document(out.to_json(message)) if args.output == "json" else table)


def usage(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        response = conn.call(conn.api.GetUsage, pb.GetUsageRequest(caller=_caller(args)))
    _print(args, response, out.usage_table(response))
    if not response.store_up:
        sys.stderr.write("tokengate ctl: warning: the quota store is down; usage may be stale\n")
    return EXIT_OK


def top(args: argparse.Namespace) -> int:
    request = pb.TopConsumersRequest(window=args.window, measure=args.measure, count=args.count)
    with connect(args) as conn:
        response = conn.call(conn.api.TopConsumers, request)
    _print(args, response, out.top_table(response))
    return EXIT_OK


def policy_show(args: argparse.Namespace) -> int:
    with connect(args) as conn:
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


def policy_validate(args: argparse.Namespace) -> int:
    if args.remote:
        with connect(args) as conn:
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


def override(args: argparse.Namespace) -> int:
    request = pb.SetOverrideRequest(caller=_caller(args), ttl_seconds=args.ttl, reason=args.reason)
    extra: Extra | None = args.extra
    if extra is None:
        request.kind = pb.SetOverrideRequest.BLOCK
    else:
        request.kind = pb.SetOverrideRequest.EXTRA_QUOTA
        request.limit, request.amount = extra.limit, extra.amount
    with connect(args) as conn:
        response = conn.call(conn.api.SetOverride, request)
    unit = extra.unit if extra else ""
    _print(args, response, out.override_text(request, response, now=time.time(), unit=unit))
    return EXIT_OK


def reset(args: argparse.Namespace) -> int:
    request = pb.ResetUsageRequest(caller=_caller(args), reason=args.reason)
    with connect(args) as conn:
        response = conn.call(conn.api.ResetUsage, request)
    _print(args, response, out.reset_text(request, response))
    return EXIT_OK


def backends(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        response = conn.call(conn.api.GetBackends, pb.GetBackendsRequest())
    if not response.store_up:
        raise CtlError("the backend health store did not answer", exit_code=EXIT_UNREACHABLE)
    _print(args, response, out.backends_table(response))
    return EXIT_OK


def queue(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        response = conn.call(conn.api.GetQueue, pb.GetQueueRequest())
    if not response.store_up:
        raise CtlError("the quota store did not answer", exit_code=EXIT_UNREACHABLE)
    _print(args, response, out.queue_table(response))
    return EXIT_OK


def events(args: argparse.Namespace) -> int:
    """The stream has no deadline (it is a live tail); `--count N` ends it after N events."""
    with connect(args) as conn:
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
