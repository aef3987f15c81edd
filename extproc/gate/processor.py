"""One `Processor` per ext_proc stream (= one HTTP request): one method per phase, the
request's state on the object. It makes decisions; the backend and counter do the I/O; the
replies are built by `mutations`.

Phases, as Envoy sends them (only those a request needs, via `mode_override`):
request headers -> request body -> response headers -> response body -> (stream end).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc._json import decode_object
from extproc.errors import (
    ClientError,
    InternalFailure,
    PayloadTooLarge,
    PermissionDenied,
    Unavailable,
)
from extproc.gate import replies, routes
from extproc.gate.credentials import CLIENT_CREDENTIAL_HEADERS
from extproc.gate.identity import Caller, identify, service_account_from, verified_claims
from extproc.gate.runtime import Runtime
from extproc.gate.stream import DEBIT_BATCH_TOKENS, AnswerStream
from extproc.policy.model import QuotaPolicy
from extproc.providers import ParsedRequest, Provider, Usage
from extproc.providers.tokens import OFFLOAD_CHARS, encoding_name_for
from extproc.quota import (
    Cost,
    Refusal,
    Reservation,
    limits_for,
    ratelimit_headers,
    refusal_error,
)
from extproc.quota.costing import Costing
from extproc.quota.windows import ScopedLimit
from extproc.telemetry.events import Event

log = logging.getLogger(__name__)

UPSTREAM_HEADER = "x-tokengate-upstream"


def header_map(headers: ep.HttpHeaders) -> dict[str, str]:
    return {
        h.key: (h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value)
        for h in headers.headers.headers
    }


class Processor:
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._provider: Provider = routes.DEFAULT_PROVIDER
        self._endpoint: routes.Endpoint | None = None
        self._caller: Caller | None = None
        self._policy: QuotaPolicy | None = None
        self._limits: tuple[ScopedLimit, ...] = ()
        self._model = "-"
        self._parsed: ParsedRequest | None = None
        self._prompt_tokens = 0
        self._reservation: Reservation | None = None
        self._stream: AnswerStream | None = None
        self._cut_by: ClientError | None = None  # set once a stream was cut
        self._costing = Costing(None)
        self._admitted_at = 0.0
        self._headers: dict[str, str] = {}
        self._answer: list[bytes] = []  # bounded copy of the answer, for its usage
        self._answer_bytes = 0
        self.outcome = "incomplete"

    # -- phases ------------------------------------------------------------------------

    async def on_request_headers(
        self, msg: ep.HttpHeaders, metadata: base_pb2.Metadata | None = None
    ) -> ep.ProcessingResponse:
        headers = header_map(msg)
        self._endpoint = routes.match(headers.get(":path", "/"))
        if self._endpoint is not None and headers.get(":method") != "POST":
            self._endpoint = None  # e.g. GET /v1/chat/completions lists stored completions
        if self._endpoint is not None:
            self._provider = self._endpoint.provider
        try:
            self._admit_caller(headers, verified_claims(metadata))
            if self._endpoint is None:
                await self._reserve(Cost(requests=1))
            else:
                self._check_declared_length(headers)
        except ClientError as error:
            return self._refuse(error)
        upstream = self._endpoint.upstream if self._endpoint else routes.DEFAULT_UPSTREAM
        secret = self._rt.credentials.current.get(upstream)
        if secret is None:
            return self._refuse(Unavailable(f"no provider credential configured for {upstream}"))
        name = self._provider.credential_header
        return replies.request_headers_reply(
            set_headers={
                name: self._provider.credential_value(secret.reveal()),
                UPSTREAM_HEADER: upstream,
            },
            remove=[h for h in CLIENT_CREDENTIAL_HEADERS if h != name],
            mode=replies.GOVERNED_MODE if self._endpoint else replies.PASSTHROUGH_MODE,
            clear_route_cache=True,
        )

    def needs_more_time(self, msg: ep.HttpBody) -> bool:
        """A body this large is counted off-thread; ask Envoy to wait longer for it."""
        return len(msg.body) > OFFLOAD_CHARS

    async def on_request_body(self, msg: ep.HttpBody) -> ep.ProcessingResponse:
        assert self._endpoint is not None and self._policy is not None
        try:
            if not msg.end_of_stream or len(msg.body) > self._rt.limits.max_body_bytes:
                raise self._too_large(len(msg.body))
            parsed = self._endpoint.parse(decode_object(msg.body))
            self._model = parsed.model
            if not self._policy.allows_model(parsed.model):
                raise PermissionDenied(
                    f"Model '{parsed.model}' is not allowed for namespace "
                    f"'{self._policy.namespace}'.",
                )
            self._costing = Costing.for_request(self._rt.prices, self._limits, parsed.model)
            self._prompt_tokens = await self._count_prompt(parsed)
            expected = parsed.max_output_tokens or self._policy.default_max_tokens
            if parsed.stream and self._policy.stream_reserve_tokens is not None:
                expected = min(expected, self._policy.stream_reserve_tokens)
            await self._reserve(self._costing.estimate(self._prompt_tokens, expected))
        except ClientError as error:
            return self._refuse(error)
        self._parsed = parsed
        self._admitted_at = time.perf_counter()
        if parsed.rewritten_body is not None:
            return replies.request_body_reply(parsed.rewritten_body)
        return replies.REQUEST_BODY_CONTINUE

    async def on_response_headers(self, msg: ep.HttpHeaders) -> ep.ProcessingResponse:
        headers = header_map(msg)
        mode = None
        if not headers.get(":status", "0").startswith("2"):
            self.outcome = "upstream_error"
            if self._reservation is not None:
                await self._rt.store.release(self._reservation)
                self._reservation = None
            mode = replies.SKIP_RESPONSE_BODY_MODE
        elif self._endpoint is None:
            self.outcome = "passthrough"
        elif self._parsed is not None and headers.get("content-type", "").startswith(
            "text/event-stream"
        ):
            self._stream = self._open_stream(self._parsed)
        return replies.response_headers_reply(set_headers=self._headers, mode=mode)

    async def on_response_body(self, msg: ep.HttpBody) -> ep.ProcessingResponse:
        if self._cut_by is not None:
            # The error event went out with the last chunk; answering now makes Envoy reset
            # both sides, so the provider stops generating (and billing).
            error = self._cut_by
            return replies.immediate_reply(
                status=error.status,
                body=self._provider.error_body(error),
                headers={},
                details="tokengate_stream_cut",
            )
        if self._stream is not None:
            return await self._stream_chunk(self._stream, msg)
        if self._reservation is not None:
            self._keep(msg.body)
            if msg.end_of_stream:
                # Before the reply: a caller's next request, sent the moment it has this
                # answer, must find its concurrency slot and unused tokens given back.
                await self._settle_from_body(b"".join(self._answer))
        return replies.RESPONSE_BODY_CONTINUE

    def _keep(self, chunk: bytes) -> None:
        """Keep the answer up to the body limit; past it, usage is unreadable and the
        reservation is charged as it stands (the answer itself flows on untouched)."""
        self._answer_bytes += len(chunk)
        if self._answer_bytes <= self._rt.limits.max_body_bytes:
            self._answer.append(chunk)
        else:
            self._answer.clear()

    async def finish(self) -> None:
        """The stream is over (answered, refused, or the client went away): settle exactly
        once. A streamed answer is charged what it delivered; a plain one without usage
        the reservation: the upstream may have billed a full answer, and over-charging an
        estimate beats losing usage."""
        if self._reservation is not None:
            if self._stream is not None:
                # The client may close as soon as it read the last event, before Envoy sent
                # us end_of_stream: usage that already arrived still settles the stream.
                usage = self._stream.reader.usage
                self._rt.metrics.observe_count_error(self._model, self._stream.completion, usage)
                if usage is None:
                    await self._settle(self._prompt_tokens, self._stream.completion)
                else:
                    await self._settle_usage(usage)
            else:
                reservation, self._reservation = self._reservation, None
                await self._rt.store.settle(reservation, reservation.cost)
        namespace = self._caller.namespace if self._caller else "-"
        self._rt.metrics.requests.labels(
            namespace, self._rt.metrics.model_label(self._model), self.outcome
        ).inc()

    # -- steps -------------------------------------------------------------------------

    def _admit_caller(self, headers: Mapping[str, str], claims: Mapping[str, Any] | None) -> None:
        snapshot = self._rt.policies.current
        self._caller = identify(
            snapshot,
            authorization=headers.get("authorization"),
            x_api_key=headers.get("x-api-key"),
            service_account=service_account_from(claims),
        )
        self._policy = snapshot.policies.get(self._caller.namespace)
        if self._policy is None:
            raise PermissionDenied(
                f"No QuotaPolicy governs namespace '{self._caller.namespace}'.", code="no_policy"
            )
        applied = self._rt.overrides.applied(self._caller.namespace, self._caller.key_name)
        if applied.block is not None:
            raise PermissionDenied(
                f"Blocked by the platform team until {applied.block.expires_iso}: "
                f"{applied.block.reason}",
                code="blocked",
            )
        self._limits = limits_for(self._policy, self._caller.key, applied.extra)

    def _check_declared_length(self, headers: Mapping[str, str]) -> None:
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self._rt.limits.max_body_bytes:
            raise self._too_large(int(declared))

    def _too_large(self, size: int) -> PayloadTooLarge:
        limit = self._rt.limits.max_body_bytes
        return PayloadTooLarge(f"Request body of {size} bytes exceeds the limit of {limit} bytes.")

    async def _count_prompt(self, parsed: ParsedRequest) -> int:
        encoding = encoding_name_for(parsed.model)
        counted = await self._rt.counter.count_texts(parsed.prompt_texts, encoding)
        return parsed.framing_tokens + counted

    async def _reserve(self, cost: Cost) -> None:
        assert self._policy is not None
        decision = await self._rt.store.reserve(
            self._rt.next_request_id(), self._limits, cost, self._policy.fail_mode
        )
        self._headers = ratelimit_headers(decision.states)
        if decision.refusal is not None:
            assert self._caller is not None
            limit = decision.refusal.scoped.limit.name
            self._rt.metrics.refusals.labels(self._caller.namespace, limit).inc()
            error = refusal_error(decision.refusal)
            self._publish("refusal", error.message, limit)
            raise error
        self._reservation = decision.reservation

    async def _settle_from_body(self, body: bytes) -> None:
        assert self._reservation is not None
        usage = self._provider.parse_usage(_loads_or_empty(body)) if body else None
        self.outcome = "ok"
        if usage is None:
            reservation, self._reservation = self._reservation, None
            await self._rt.store.settle(reservation, reservation.cost)
        else:
            await self._settle_usage(usage)

    async def _settle_usage(self, usage: Usage) -> None:
        await self._settle(
            usage.prompt_tokens, usage.completion_tokens, usage.cached_prompt_tokens, "provider"
        )

    async def _settle(
        self, prompt: int, completion: int, cached: int = 0, source: str = "counted"
    ) -> None:
        """Replace the reservation by the true cost (provider usage, else our count) and
        record it."""
        assert self._reservation is not None
        reservation, self._reservation = self._reservation, None
        actual = self._costing.actual(prompt, completion, cached)
        await self._rt.store.settle(reservation, actual)
        if self._caller is not None:
            self._rt.ledger.record(self._caller.namespace, self._caller.key_name, actual)
            self._rt.metrics.record_tokens(
                self._caller.namespace, self._model, prompt=prompt, completion=completion,
                source=source,
            )  # fmt: skip

    # -- streamed answers --------------------------------------------------------------

    def _open_stream(self, parsed: ParsedRequest) -> AnswerStream:
        assert self._reservation is not None
        return AnswerStream(
            provider=self._provider,
            encoding=encoding_name_for(parsed.model),
            hide_usage_event=parsed.hide_usage_event,
            prompt_tokens=self._prompt_tokens,
            reserved_tokens=self._reservation.cost.tokens,
            started=self._admitted_at,
        )

    async def _stream_chunk(self, stream: AnswerStream, msg: ep.HttpBody) -> ep.ProcessingResponse:
        chunk = stream.take(msg.body, end_of_stream=msg.end_of_stream)
        if self._reservation is None:  # settled already (e.g. an upstream error): just pass
            return _body_reply(chunk.forward)
        shortfall = stream.shortfall(chunk.tokens)
        if shortfall > 0:
            try:
                refusal = await self._debit(stream, shortfall)
            except Unavailable as error:  # the store went away and the policy fails closed
                return await self._cut_stream(stream, error, "quota-store")
            if refusal is not None:
                return await self._cut_stream(
                    stream, refusal_error(refusal), refusal.scoped.limit.name
                )
        stream.delivered(chunk.tokens)
        self._rt.metrics.observe_stream(stream, chunk.tokens)
        if msg.end_of_stream:
            self.outcome = "ok"
            usage = stream.reader.usage
            self._rt.metrics.observe_count_error(self._model, stream.completion, usage)
            if usage is None:
                await self._settle(self._prompt_tokens, stream.completion)
            else:
                await self._settle_usage(usage)
        return _body_reply(chunk.forward)

    async def _debit(self, stream: AnswerStream, shortfall: int) -> Refusal | None:
        """Grow the reservation (see `streaming` for the batch rule); the refusal if even
        the shortfall does not fit."""
        asks = (DEBIT_BATCH_TOKENS, shortfall) if shortfall < DEBIT_BATCH_TOKENS else (shortfall,)
        refusal = None
        for ask in asks:
            assert self._reservation is not None
            assert self._policy is not None
            decision = await self._rt.store.debit(
                self._reservation, self._costing.more_completion(ask), self._policy.fail_mode
            )
            self._rt.metrics.stream_debits.inc()
            if decision.reservation is not None:
                self._reservation = decision.reservation
                stream.granted += ask
                return None
            refusal = decision.refusal
        return refusal

    async def _cut_stream(
        self, stream: AnswerStream, error: ClientError, limit: str
    ) -> ep.ProcessingResponse:
        """Replace this chunk by a provider-format error event naming the limit; charge
        exactly what was delivered before it."""
        self._cut_by = error
        self.outcome = "cut"
        assert self._caller is not None
        self._rt.metrics.streams_cut.labels(self._caller.namespace, limit).inc()
        self._publish("cut", error.message, limit)
        await self._settle(self._prompt_tokens, stream.completion)
        return _body_reply(self._provider.stream_error(error))

    def _publish(self, kind: str, message: str, limit: str) -> None:
        assert self._caller is not None
        self._rt.events.publish(
            Event(kind, message, self._caller.namespace, self._caller.key_name or "", limit)
        )

    def _refuse(self, error: ClientError) -> ep.ProcessingResponse:
        self.outcome = error.outcome
        return replies.immediate_reply(
            status=error.status,
            body=self._provider.error_body(error),
            headers={**self._headers, **error.headers()},
            details=f"tokengate_{self.outcome}",
        )

    def internal_error(self, exc: Exception) -> ep.ProcessingResponse:
        """Last resort for a bug: a generic 500 in the provider's format, no internals."""
        log.error("internal error while processing a request", exc_info=exc)
        return self._refuse(InternalFailure("The gateway failed to process this request."))


def _body_reply(forward: bytes | None) -> ep.ProcessingResponse:
    if forward is None:
        return replies.RESPONSE_BODY_CONTINUE
    return replies.response_body_reply(forward)


def _loads_or_empty(body: bytes) -> dict[str, Any]:
    try:
        return decode_object(body)
    except ClientError:
        return {}
