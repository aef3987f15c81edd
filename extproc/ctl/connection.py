"""How `tokengate ctl` reaches the control API: the bearer token, one channel per command,
and gRPC failures translated into `CtlError` with the exit code of their class."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc

from extproc.control import control_pb2 as pb
from extproc.control import control_pb2_grpc
from extproc.ctl.exits import EXIT_AUTH, EXIT_REFUSED, EXIT_UNREACHABLE, CtlError

_AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
_UNREACHABLE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}

Req = TypeVar("Req")
Resp = TypeVar("Resp")


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
    GetBackends: grpc.UnaryUnaryMultiCallable[pb.GetBackendsRequest, pb.GetBackendsResponse]
    GetQueue: grpc.UnaryUnaryMultiCallable[pb.GetQueueRequest, pb.GetQueueResponse]


@dataclass(frozen=True, slots=True, kw_only=True)
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


def read_token(args: argparse.Namespace) -> str | None:
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
def connect(args: argparse.Namespace) -> Iterator[Connection]:
    """The token is read before the channel opens, so a bad token file fails with exit 3
    without a connection attempt."""
    token = read_token(args)
    metadata: grpc.Metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(args.server) as channel:
        make: Callable[[grpc.Channel], ControlApi] = control_pb2_grpc.ControlStub
        yield Connection(
            api=make(channel), server=args.server, metadata=metadata, timeout_s=args.timeout
        )
