"""The control API (proto/tokengate/control/v1/control.proto), served on its own port.

Authentication: every call carries `authorization: Bearer <token>`, compared in constant time
with the token file (a mounted Secret, re-read when it changes). Overrides and resets are
written to the audit log (logger `tokengate.audit`, one JSON object per line) and published
as events.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc import aio as grpc_aio

from extproc.backends.health import BackendState
from extproc.control import control_pb2 as pb
from extproc.control import control_pb2_grpc as pb_grpc
from extproc.control.queue_view import queue_view
from extproc.errors import ConfigError, PolicyError, QuotaStoreError
from extproc.gate.runtime import Runtime
from extproc.policy.loader import validate_file
from extproc.policy.model import ApiKey
from extproc.policy.overrides import BLOCK, EXTRA, Override
from extproc.quota.admission import limits_for
from extproc.quota.windows import ScopedLimit, describe_limit_period
from extproc.telemetry.events import Event

audit = logging.getLogger("tokengate.audit")
_T = TypeVar("_T")
MAX_OVERRIDE_TTL_S = 30 * 86400


class TokenAuth(grpc_aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses any call without the right bearer token (UNAUTHENTICATED)."""

    def __init__(self, token_file: Path) -> None:
        self._file = token_file
        self._stamp: tuple[int, int] | None = None
        self._token = b""
        self._load()

    def _load(self) -> None:
        try:
            stat = self._file.stat()
            if (stat.st_mtime_ns, stat.st_size) != self._stamp:
                token = self._file.read_bytes().strip()
                if not token:
                    raise ConfigError(f"control token file {self._file} is empty")
                self._token, self._stamp = token, (stat.st_mtime_ns, stat.st_size)
        except OSError as exc:
            raise ConfigError(f"cannot read control token file {self._file}") from exc

    def _allowed(self, metadata: Any) -> bool:
        self._load()  # a rotated Secret takes effect without a restart
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                return hmac.compare_digest(value[7:].strip().encode(), self._token)
        return False

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        if self._allowed(details.invocation_metadata):
            return await continuation(details)
        return _deny(details.method)


def _deny(method: str) -> Any:
    async def unary(request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        yield None  # pragma: no cover - abort raises

    if method.endswith("/WatchEvents"):
        return grpc.unary_stream_rpc_method_handler(stream)
    return grpc.unary_unary_rpc_method_handler(unary)


class ControlService(pb_grpc.ControlServicer):
    def __init__(self, runtime: Runtime, *, reload_status: Callable[[], tuple[str, float]]):
        self._rt = runtime
        self._reload_status = reload_status

    def _limits(self, caller: pb.Caller, context: Any) -> tuple[ScopedLimit, ...]:
        snapshot = self._rt.policies.current
        policy = snapshot.policies.get(caller.namespace)
        if policy is None:
            raise _Refused(grpc.StatusCode.NOT_FOUND, f"no QuotaPolicy for {caller.namespace!r}")
        key: ApiKey | None = None
        if caller.key:
            key = next(
                (
                    k
                    for k in snapshot.keys_by_sha256.values()
                    if k.namespace == caller.namespace and k.name == caller.key
                ),
                None,
            )
            if key is None:
                raise _Refused(
                    grpc.StatusCode.NOT_FOUND, f"no ApiKey {caller.key!r} in {caller.namespace!r}"
                )
        applied = self._rt.overrides.applied(caller.namespace, caller.key or None)
        return limits_for(policy, key, applied.extra)

    async def GetUsage(self, request: pb.GetUsageRequest, context: Any) -> pb.GetUsageResponse:
        async def answer() -> pb.GetUsageResponse:
            limits = self._limits(request.caller, context)
            states = await self._rt.store.peek(limits)
            return pb.GetUsageResponse(
                limits=[_usage(s.scoped, s.used, s.reset_after) for s in states],
                policy_version=self._rt.policies.current.version,
                store_up=self._rt.store.up,
            )

        return await _guard(answer, context)

    async def TopConsumers(
        self, request: pb.TopConsumersRequest, context: Any
    ) -> pb.TopConsumersResponse:
        window, measure = request.window or "1h", request.measure or "tokens"
        if window not in ("1m", "1h", "1d") or measure not in ("tokens", "requests", "usd"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "window 1m|1h|1d, measure tokens|requests|usd"
            )
        rows = await self._rt.ledger.top(window, measure, request.count or 10)
        consumers = [
            pb.Consumer(caller=pb.Caller(namespace=ns, key=key), amount=amount)
            for ns, key, amount in rows
        ]
        return pb.TopConsumersResponse(consumers=consumers, window=window, measure=measure)

    async def GetPolicy(self, request: pb.GetPolicyRequest, context: Any) -> pb.GetPolicyResponse:
        snapshot = self._rt.policies.current
        error, at = self._reload_status()
        return pb.GetPolicyResponse(
            version=snapshot.version,
            loaded_at=snapshot.loaded_at,
            sources=snapshot.sources,
            namespaces=sorted(snapshot.policies),
            keys=len(snapshot.keys_by_sha256),
            last_reload_error=error,
            last_reload_at=at,
            routes=[
                pb.OpenRoute(
                    name=r.name,
                    namespace=r.namespace or "",
                    methods=r.methods,
                    path=r.path,
                    provider=r.provider,
                    namespaces=r.namespaces,
                    limits=[limit.name for limit in r.limits],
                )
                for r in snapshot.routes
            ],
            model_routes=[
                pb.ModelRouteInfo(
                    name=r.name,
                    namespace=r.namespace or "",
                    model=r.model,
                    backends=[f"{b.provider}/{b.model}" for b in r.backends],
                )
                for r in snapshot.model_routes
            ],
        )

    async def GetBackends(
        self, request: pb.GetBackendsRequest, context: Any
    ) -> pb.GetBackendsResponse:
        """Every backend the model routes in force name, with the routes naming it."""
        routes: dict[str, list[str]] = {}
        for route in self._rt.policies.current.model_routes:
            for backend in route.backends:
                routes.setdefault(f"{backend.provider}/{backend.model}", []).append(route.name)
        try:
            states = await self._rt.health.view(sorted(routes))
        except QuotaStoreError:
            return pb.GetBackendsResponse(store_up=False)
        return pb.GetBackendsResponse(
            backends=[_backend(state, routes[state.backend]) for state in states], store_up=True
        )

    async def GetQueue(self, request: pb.GetQueueRequest, context: Any) -> pb.GetQueueResponse:
        """Every shared capacity's queue by class (`queue_view`)."""
        return await queue_view(self._rt)

    async def ValidatePolicy(
        self, request: pb.ValidatePolicyRequest, context: Any
    ) -> pb.ValidatePolicyResponse:
        file = request.file or "policy.yaml"
        try:
            documents = validate_file(
                request.content, file=file, allow_usd=self._rt.prices is not None
            )
        except PolicyError as error:
            problem = pb.PolicyProblem(
                file=error.file,
                document=error.document or 0,
                field=error.field or "",
                problem=error.problem,
            )
            return pb.ValidatePolicyResponse(valid=False, problems=[problem])
        return pb.ValidatePolicyResponse(valid=True, documents=len(documents))

    async def SetOverride(
        self, request: pb.SetOverrideRequest, context: Any
    ) -> pb.SetOverrideResponse:
        async def answer() -> pb.SetOverrideResponse:
            override = _override(request)
            self._limits(request.caller, context)  # the caller must exist
            await self._rt.overrides.add(override)
            _audit(
                "override",
                request.caller,
                kind=override.kind,
                limit=override.limit,
                amount=override.amount,
                expires_at=override.expires_at,
                reason=override.reason,
            )
            self._rt.events.publish(
                Event(
                    "override",
                    f"{override.kind} until {override.expires_at:.0f}: {override.reason}",
                    request.caller.namespace,
                    request.caller.key,
                    override.limit,
                )
            )
            return pb.SetOverrideResponse(expires_at=override.expires_at)

        return await _guard(answer, context)

    async def ResetUsage(
        self, request: pb.ResetUsageRequest, context: Any
    ) -> pb.ResetUsageResponse:
        async def answer() -> pb.ResetUsageResponse:
            if not request.reason.strip():
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "a reason is required")
            limits = self._limits(request.caller, context)
            scope = [s for s in limits if s.scope.key_name == (request.caller.key or None)]
            count = await self._rt.store.reset(scope)
            _audit("reset", request.caller, limits=count, reason=request.reason)
            self._rt.events.publish(
                Event("reset", request.reason, request.caller.namespace, request.caller.key)
            )
            return pb.ResetUsageResponse(limits_reset=count)

        return await _guard(answer, context)

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: Any
    ) -> AsyncIterator[pb.Event]:
        kinds = set(request.kinds)
        async for event in self._rt.events.subscribe():
            if kinds and event.kind not in kinds:
                continue
            yield pb.Event(
                at=event.at,
                kind=event.kind,
                message=event.message,
                limit=event.limit,
                caller=pb.Caller(namespace=event.namespace, key=event.key),
            )


def _backend(state: BackendState, routes: list[str]) -> pb.BackendHealth:
    def known(value: float | None) -> float:
        return -1 if value is None else value

    return pb.BackendHealth(
        backend=state.backend, state=state.state, failures=state.failures,
        open_for_seconds=state.open_for_s,
        remaining_requests=int(known(state.remaining_requests)),
        remaining_tokens=int(known(state.remaining_tokens)),
        requests_reset_seconds=known(state.requests_reset_s),
        tokens_reset_seconds=known(state.tokens_reset_s),
        retry_after_seconds=known(state.retry_after_s), routes=routes,
    )  # fmt: skip


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


async def _guard(answer: Callable[[], Awaitable[_T]], context: Any) -> _T:
    """Turn refusals into gRPC statuses (context.abort raises, so nothing falls through)."""
    try:
        return await answer()
    except _Refused as refused:
        await context.abort(refused.code, refused.message)
        raise
    except QuotaStoreError as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"quota store: {exc}")
        raise


def _override(request: pb.SetOverrideRequest) -> Override:
    if not request.reason.strip():
        raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "a reason is required")
    if not 0 < request.ttl_seconds <= MAX_OVERRIDE_TTL_S:
        raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "ttl_seconds must be in (0, 30 days]")
    if request.kind == pb.SetOverrideRequest.BLOCK:
        kind, limit, amount = BLOCK, "", 0
    elif request.kind == pb.SetOverrideRequest.EXTRA_QUOTA and request.limit and request.amount > 0:
        kind, limit, amount = EXTRA, request.limit, request.amount
    else:
        raise _Refused(
            grpc.StatusCode.INVALID_ARGUMENT, "BLOCK, or EXTRA_QUOTA with limit and amount > 0"
        )
    return Override(
        namespace=request.caller.namespace,
        key=request.caller.key,
        kind=kind,
        limit=limit,
        amount=amount,
        expires_at=time.time() + request.ttl_seconds,
        reason=request.reason.strip(),
    )


def _usage(scoped: ScopedLimit, used: int, reset_after: float) -> pb.LimitUsage:
    limit = scoped.limit
    return pb.LimitUsage(
        name=limit.name,
        scope=scoped.scope.label,
        measure=limit.measure.value,
        algorithm=limit.algorithm.value,
        per=describe_limit_period(limit),
        used=used,
        limit=limit.amount,
        remaining=max(0, limit.amount - used),
        reset_seconds=reset_after,
    )


def _audit(action: str, caller: pb.Caller, **fields: object) -> None:
    record = {
        "at": time.time(),
        "action": action,
        "namespace": caller.namespace,
        "key": caller.key,
        **fields,
    }
    audit.info(json.dumps(record, sort_keys=True))
