"""The answer of an admitted request, plain or streamed, and its settlement.

Both kinds take over the reservation once the upstream answered 2xx and settle it exactly
once: at the end of the body, on a cut, or when the stream ends early (`settle`, which the
processor also calls from `finish`). Settlement replaces the reservation by the true cost:
the provider's reported usage when it arrived, else our own count; a plain answer without
usage is charged its reservation (the upstream may have billed a full answer, and
over-charging an estimate beats losing usage).
"""

from __future__ import annotations

from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc._json import decode_object
from extproc.errors import BadGateway, ClientError
from extproc.gate import key_budgets, replies
from extproc.gate.admission import Admission
from extproc.gate.budget import Cut, StreamBudget
from extproc.gate.encoding import Decoder
from extproc.gate.endpoints import ENDPOINTS
from extproc.gate.runtime import Runtime
from extproc.gate.stream import AnswerStream, Chunk
from extproc.providers import Provider, Usage
from extproc.providers.tokens import encoding_name_for
from extproc.quota import Reservation
from extproc.telemetry.metrics import GEN_AI_OPERATIONS, Settlement

UNREADABLE = "upstream-encoding"  # the `limit` label of a stream cut for an unreadable chunk
# gen_ai.operation.name by the API the client called (one provider schema per endpoint).
_OPERATIONS: dict[int, str] = {
    id(e.provider): GEN_AI_OPERATIONS.get(e.name, e.name) for e in ENDPOINTS.values()
}


def operation_of(provider: Provider) -> str:
    return _OPERATIONS.get(id(provider), "chat")


async def settle(
    rt: Runtime,
    admission: Admission,
    reservation: Reservation,
    usage: Usage,
    *,
    source: str,
    operation: str,
) -> None:
    """Charge `usage` in place of the reservation, and record it (ledger, metrics).
    `source`: `provider` (its complete report), `partial` (its numbers so far, our count
    where it had none yet) or `counted` (ours alone); `operation`: gen_ai.operation.name."""
    actual = admission.costing.actual(
        usage.prompt_tokens, usage.completion_tokens, usage.cached_prompt_tokens,
        usage.cache_write_tokens,
    )  # fmt: skip
    await rt.store.settle(reservation, actual)
    key_budgets.charge_later(rt, admission.key, reservation.request_id, actual)
    caller = admission.tenant.caller
    rt.ledger.record(caller.namespace, caller.key_name, actual)
    rt.metrics.record_settlement(
        Settlement(
            namespace=caller.namespace, key=caller.key_name or "-", model=admission.model,
            provider=admission.provider, usage=usage, usd_micros=actual.usd_micros,
            source=source, counted_prompt=admission.prompt_tokens,
            reserved_completion=admission.reservation.cost.tokens - admission.prompt_tokens,
            operation=operation,
        )
    )  # fmt: skip


async def settle_reserved(rt: Runtime, admission: Admission, reservation: Reservation) -> None:
    """No usage to read (the client left, an unreadable answer): charged as reserved, as is
    the key that served it (the provider may have billed the work)."""
    await rt.store.settle(reservation, reservation.cost)
    key_budgets.charge_later(rt, admission.key, reservation.request_id, reservation.cost)


def billable(usage: Usage | None) -> Usage | None:
    """None for a usage of all zeros: a provider always bills the prompt, so zeros are no
    report (a translated answer whose backend sent none, or a broken upstream), and the
    reservation or our count is charged instead of nothing."""
    if usage is None or (usage.prompt_tokens == 0 and usage.completion_tokens == 0):
        return None
    return usage


def at_least_reported(counted: Usage, reported: Usage | None) -> tuple[Usage, str]:
    """An answer that ended before the provider's final usage (cut, client gone, upstream
    error or reset) is charged our count, but never below what the provider had already
    reported (Anthropic's `message_start` gives the input, cache reads and writes)."""
    if reported is None:
        return counted, "counted"
    merged = Usage(
        prompt_tokens=max(counted.prompt_tokens, reported.prompt_tokens),
        completion_tokens=max(counted.completion_tokens, reported.completion_tokens),
        cached_prompt_tokens=reported.cached_prompt_tokens,
        cache_write_tokens=reported.cache_write_tokens,
        reasoning_tokens=reported.reasoning_tokens,
    )
    return merged, "partial"


class _Answer:
    """What both kinds of answer start from: the admitted request, the provider schema that
    reads it, and the decoder when the upstream compressed it anyway."""

    cut: Cut | None = None  # set once a stream was cut; a plain answer is never cut

    def __init__(
        self,
        *,
        runtime: Runtime,
        admission: Admission,
        provider: Provider,
        decoder: Decoder | None,
    ) -> None:
        self._rt = runtime
        self._admission = admission
        self._provider = provider
        self._decoder = decoder
        self._operation = operation_of(provider)
        self._start()

    def _start(self) -> None:
        """What this kind of answer sets up once the upstream answered 2xx."""


class PlainAnswer(_Answer):
    """A buffered answer: kept (up to the body limit) until its end, then settled on the
    `usage` it carries, before the last reply goes out — a caller's next request, sent the
    moment it has this answer, must find its concurrency slot and unused tokens given back."""

    def _start(self) -> None:
        self._reservation: Reservation | None = self._admission.reservation
        self._chunks: list[bytes] = []
        self._size = 0

    @property
    def holds(self) -> bool:
        """Not settled yet (the service then starts a settling task at the stream's end)."""
        return self._reservation is not None

    async def on_body(self, msg: ep.HttpBody) -> ep.ProcessingResponse:
        body = msg.body
        if self._decoder is not None:
            try:
                body = self._decoder.decode(body)
            except BadGateway as error:  # charged its reservation; Envoy resets the answer
                await self.settle()
                return _immediate(self._provider, error)
        self._keep(body)
        if msg.end_of_stream:
            await self._settle_from(b"".join(self._chunks))
        if self._decoder is None:
            return replies.RESPONSE_BODY_CONTINUE
        return replies.response_body_reply(body)

    def _keep(self, chunk: bytes) -> None:
        """Past the body limit, usage is unreadable and the reservation is charged as it
        stands (the answer itself flows on untouched)."""
        self._size += len(chunk)
        if self._size <= self._rt.limits.max_body_bytes:
            self._chunks.append(chunk)
        else:
            self._chunks.clear()

    async def _settle_from(self, body: bytes) -> None:
        reservation, self._reservation = self._reservation, None
        if reservation is None:
            return
        usage = billable(self._provider.parse_usage(_loads_or_empty(body)) if body else None)
        if usage is None:
            await settle_reserved(self._rt, self._admission, reservation)
        else:
            await settle(
                self._rt, self._admission, reservation, usage,
                source="provider", operation=self._operation,
            )  # fmt: skip

    async def settle(self) -> None:
        """Ended before its last byte (the client left): charged its reservation."""
        reservation, self._reservation = self._reservation, None
        if reservation is not None:
            await settle_reserved(self._rt, self._admission, reservation)


class StreamedAnswer(_Answer):
    """An SSE answer, chunk by chunk: each chunk is parsed and counted (`AnswerStream`),
    covered by the stream's budget (`StreamBudget`) or cut with a provider-format error
    event naming the limit; the next message after a cut is answered with an immediate
    response, which makes Envoy reset both sides so the provider stops generating."""

    def _start(self) -> None:
        admission, runtime = self._admission, self._rt
        request = admission.request
        self._stream = AnswerStream(
            provider=self._provider,
            encoding=encoding_name_for(request.model),
            hide_usage_event=request.hide_usage_event,
            started=admission.admitted_at,
        )
        self._budget = StreamBudget(
            store=runtime.store,
            metrics=runtime.metrics,
            reservation=admission.reservation,
            costing=admission.costing,
            fail_mode=admission.tenant.policy.fail_mode,
            prompt_tokens=admission.prompt_tokens,
        )
        self._pace = runtime.metrics.stream_pace(
            self._operation, admission.provider, admission.model
        )
        self._completed = False  # its last chunk arrived (not cut, the client still there)

    @property
    def holds(self) -> bool:
        return self._budget.open

    async def on_body(self, msg: ep.HttpBody) -> ep.ProcessingResponse:
        if self.cut is not None:
            return _immediate(self._provider, self.cut.error)
        data = msg.body
        if self._decoder is not None:
            try:
                data = self._decoder.decode(data)
            except BadGateway as error:
                return await self._cut(Cut(error, UNREADABLE))
        chunk = self._stream.take(data, end_of_stream=msg.end_of_stream)
        if chunk.forward is None and self._decoder is not None:
            chunk = Chunk(data, chunk.tokens)  # decoded: the client gets the decoded bytes
        if not self._budget.open:  # settled already (the client left): just pass it on
            return _body_reply(chunk.forward)
        if not self._budget.spend(chunk.tokens):
            cut = await self._budget.cover(chunk.tokens)
            if cut is not None:
                return await self._cut(cut)
        pace = self._stream.pace(chunk.tokens)
        if pace is not None:
            if pace.first_token_s is not None:
                self._pace.first_token.observe(pace.first_token_s)
            self._rt.metrics.observe_pace(
                first_token_s=pace.first_token_s, per_token_s=pace.per_token_s
            )
        if msg.end_of_stream:
            self._completed = True
            await self.settle()
        return _body_reply(chunk.forward)

    async def _cut(self, cut: Cut) -> ep.ProcessingResponse:
        """Replace this chunk by the error event; charge what was delivered before it."""
        self.cut = cut
        admission, metrics = self._admission, self._rt.metrics
        caller = admission.tenant.caller
        metrics.streams_cut.labels(
            caller.namespace, caller.key_name or "-", admission.provider,
            metrics.model_label(admission.model), cut.limit,
        ).inc()  # fmt: skip
        self._rt.publish("cut", cut.error.message, caller, cut.limit)
        await self.settle()
        return _body_reply(self._provider.stream_error(cut.error))

    async def settle(self) -> None:
        """Charge what the stream delivered: the provider's usage when it arrived (the
        client may close as soon as it read the last event, before Envoy sent us
        end_of_stream), else our count raised to what the provider reported so far."""
        reservation = self._budget.close()
        if reservation is None:
            return
        reader, delivered = self._stream.reader, self._budget.delivered
        self._rt.metrics.observe_count_error(self._admission.model, delivered, reader.usage)
        if self._completed and self.cut is None:
            per_token = self._stream.time_per_output_token()
            if per_token is not None:
                self._pace.per_output_token.observe(per_token)
        reported = billable(reader.usage)
        if reported is not None:
            usage, source = reported, "provider"
        else:
            counted = Usage(self._admission.prompt_tokens, delivered)
            usage, source = at_least_reported(counted, billable(reader.reported))
        await settle(
            self._rt, self._admission, reservation, usage, source=source, operation=self._operation
        )


def _immediate(provider: Provider, error: ClientError) -> ep.ProcessingResponse:
    """Answered after the response headers went out: Envoy resets both sides, so the
    provider stops generating (and billing)."""
    return replies.immediate_reply(
        status=error.status, body=provider.error_body(error), headers={},
        details="tokengate_stream_cut",
    )  # fmt: skip


def _body_reply(forward: bytes | None) -> ep.ProcessingResponse:
    if forward is None:
        return replies.RESPONSE_BODY_CONTINUE
    return replies.response_body_reply(forward)


def _loads_or_empty(body: bytes) -> dict[str, Any]:
    try:
        return decode_object(body)
    except ClientError:
        return {}
