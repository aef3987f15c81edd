"""A request to a governed endpoint (a POST that generates): its body is parsed and its prompt
counted, its estimated cost reserved against every limit of the caller, and its answer —
plain or streamed — counted and settled (`answers.py`). A model route's steps (which
backends, which key, how the body goes on, who served) are `routed.RoutedRequest`'s."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc._json import decode_object
from extproc.errors import (
    BadGateway,
    BadRequest,
    ClientError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from extproc.gate import replies
from extproc.gate.admission import Admission, Tenant, check_model, expected_completion
from extproc.gate.answers import PlainAnswer, StreamedAnswer, settle_reserved
from extproc.gate.capacity import MAX_SLEEP_S, Turn
from extproc.gate.encoding import decoder_for
from extproc.gate.endpoints import Endpoint
from extproc.gate.priority import degrade, request_class
from extproc.gate.processor import PRIORITY_HEADER, Processor, header_map, succeeded
from extproc.gate.routed import RoutedRequest
from extproc.gate.runtime import Runtime
from extproc.policy.model import Priority
from extproc.providers import ParsedRequest
from extproc.providers._base import DROP
from extproc.providers.tokens import OFFLOAD_CHARS, encoding_name_for
from extproc.quota import Cost, Reservation
from extproc.quota.clamp import at_minimum, fit_within, per_choice, room_after
from extproc.quota.costing import Costing

MAX_CLAMP_TRIES = 4  # a refusal per token/dollar limit at most; then the 429 stands
SUBSTITUTED_HEADER = "x-tokengate-model-substituted"  # "gpt-4o -> gpt-4o-mini"
QUEUED_HEADER = "x-tokengate-queued-ms"  # how long it waited for shared capacity


class GovernedProcessor(Processor):
    mode = replies.GOVERNED_MODE

    def __init__(
        self, *, runtime: Runtime, request_headers: Mapping[str, str], endpoint: Endpoint
    ) -> None:
        super().__init__(
            runtime=runtime, request_headers=request_headers, provider=endpoint.provider
        )
        self._endpoint = endpoint
        self.upstream = endpoint.upstream
        self._model = "-"  # known once the body is parsed, refused or not
        self._admission: Admission | None = None
        # Held here from admission until the answer (plain or streamed) takes it over.
        self._reservation: Reservation | None = None
        self._answer: PlainAnswer | StreamedAnswer | None = None
        self._cap: int | None = None  # the completion cap the budget allows (clamping on)
        self._route = RoutedRequest(runtime=runtime, provider=endpoint.provider)
        self._class = Priority.STANDARD  # known once the body is parsed
        self._turn: Turn | None = None  # its place at a shared capacity, if one covers it
        self._capacity: Reservation | None = None  # what the capacity let it through with
        self._forwarded = False  # the body went on (nothing was sent before)

    @property
    def model(self) -> str:
        return self._model

    @property
    def served_provider(self) -> str:
        """The provider that answered (a model route's backend), once known."""
        if self._admission is not None:
            return self._admission.provider
        return super().served_provider

    async def admit_headers(self, tenant: Tenant, *, has_body: bool) -> None:
        headers = self._request_headers
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self._rt.limits.max_body_bytes:
            raise self._too_large(int(declared))
        coding = headers.get("content-encoding", "identity").strip().lower()
        if coding not in ("", "identity"):
            raise UnsupportedMediaType(
                f"Request bodies with content-encoding {coding[:40]!r} are not accepted: the "
                "gateway counts what it forwards, so send the body uncompressed."
            )
        if not has_body:
            await self.count_refused(tenant)
            raise BadRequest("The request has no body; a JSON body is required.")

    def upstream_headers(self, key: str) -> dict[str, str]:
        """Also ask for an uncompressed answer: every byte of it is read and counted (Envoy
        compresses toward the client afterwards, if it asked)."""
        return {**super().upstream_headers(key), "accept-encoding": "identity"}

    def needs_more_time(self, msg: ep.HttpBody) -> bool:
        """A body this large is counted off-thread; ask Envoy to wait longer for it."""
        return len(msg.body) > OFFLOAD_CHARS

    async def on_request_body(self, msg: ep.HttpBody) -> ep.ProcessingResponse | replies.Deferred:
        assert self._tenant is not None, "Envoy sends the body only after the headers passed"
        try:
            self._admission = admission = await self._admit(self._tenant, msg)
        except ClientError as error:
            return self.refuse(error)
        self._reservation = admission.reservation
        return await self._take_turn(admission, may_downgrade=True)

    async def _take_turn(
        self, admission: Admission, *, may_downgrade: bool
    ) -> ep.ProcessingResponse | replies.Deferred:
        """The shared capacity's answer: go, wait (the reply deferred), go to the cheaper
        model (shedding), or the 429 (shed, or a wait past its class's maximum)."""
        turn = self._turn_for(admission, may_downgrade=may_downgrade)
        if turn is None:
            return self._forward(admission)
        try:
            verdict = await turn.first()
        except ClientError as error:  # the store is gone and the policy fails closed
            return await self._refuse_admitted(error)
        if verdict.error is not None:
            return await self._refuse_admitted(verdict.error)
        if verdict.reservation is not None:
            return self._let_through(admission, verdict.reservation)
        if verdict.downgrade:
            return await self._take_turn(self._downgraded(admission, turn), may_downgrade=False)
        wait = replies.extend_timeout_reply(turn.max_wait_s + MAX_SLEEP_S + 1)
        return replies.Deferred(first=wait, then=self._after_wait(admission, turn))

    def _turn_for(self, admission: Admission, *, may_downgrade: bool) -> Turn | None:
        """Its place at the shared capacity covering what serves it (a route's first
        backend), or None when no Capacity covers it."""
        plan = self._route.plan
        provider, model, pool = self._provider.name, admission.request.model, None
        if plan is not None:
            first = plan.backends[0]
            provider, model, pool = first.provider, first.model, first.key_pool
        capacity = self._rt.policies.current.capacity_for(provider, model, pool)
        if capacity is None:
            return None
        key = admission.tenant.caller.key
        may_downgrade &= plan is None and (key is None or key.allow_substitution)
        self._turn = Turn(
            self._rt, capacity, request_id=admission.reservation.request_id,
            klass=self._class, cost=Cost(requests=1, tokens=admission.reservation.cost.tokens),
            fail_mode=admission.tenant.policy.fail_mode, may_downgrade=may_downgrade,
        )  # fmt: skip
        self._headers[PRIORITY_HEADER] = self._class.value
        return self._turn

    async def _after_wait(self, admission: Admission, turn: Turn) -> ep.ProcessingResponse:
        try:
            reservation = await turn.wait()
        except ClientError as error:
            return await self._refuse_admitted(error)
        return self._let_through(admission, reservation)

    def _downgraded(self, admission: Admission, turn: Turn) -> Admission:
        """Shedding: a standard request goes to its capacity's cheaper model (charged at
        its price), and to the capacity that covers that model, if any."""
        cheaper = turn.capacity.cheaper_model(admission.request.model)
        assert cheaper is not None, "shedding downgrades only a model with a cheaper one"
        self._rt.metrics.degraded.labels(admission.tenant.namespace, "capacity").inc()
        request = self._substitute(admission.request, cheaper)
        costing = Costing.for_request(self._rt.prices, admission.tenant.limits, cheaper)
        self._admission = dataclasses.replace(admission, request=request, costing=costing)
        return self._admission

    def _let_through(self, admission: Admission, capacity: Reservation) -> ep.ProcessingResponse:
        if self._turn is not None and self._turn.keeps:  # a lease to return at the end
            self._capacity = capacity
        if self._turn is not None:
            waited_ms = (time.time() - self._turn.arrived) * 1000
            self._headers[QUEUED_HEADER] = str(round(waited_ms))
        return self._forward(admission)

    async def _refuse_admitted(self, error: ClientError) -> ep.ProcessingResponse:
        """Refused after the caller's own quota let it through: nothing was sent, so all it
        reserved comes back but the request itself."""
        reservation, self._reservation = self._reservation, None
        if reservation is not None:
            await self._rt.store.release(reservation)
        return self.refuse(error)

    def _forward(self, admission: Admission) -> ep.ProcessingResponse:
        self._forwarded = True
        cap = self._cap_to_write(admission.request)
        if cap is not None:
            self._headers["x-tokengate-max-tokens"] = str(cap)
        if self._route.plan is not None:
            return self._route.body_reply(
                admission, cap, request_headers=self._request_headers, answer_headers=self._headers
            )
        rewritten = admission.request.body_with(cap)
        if rewritten is not None:
            return replies.request_body_reply(rewritten)
        return replies.REQUEST_BODY_CONTINUE

    async def _admit(self, tenant: Tenant, msg: ep.HttpBody) -> Admission:
        if not msg.end_of_stream or len(msg.body) > self._rt.limits.max_body_bytes:
            raise self._too_large(len(msg.body))
        try:
            parsed = self._endpoint.parse(decode_object(msg.body))
        except BadRequest:
            await self.count_refused(tenant)  # empty, whitespace, malformed: still a request
            raise
        self._model = parsed.model
        check_model(tenant, parsed.model)
        asked = self._request_headers.get(PRIORITY_HEADER)
        self._class = request_class(tenant.policy, tenant.caller.key, asked)
        parsed = self._within_budget(tenant, parsed)
        prompt = await self._count_prompt(parsed)
        chain = self._route.chain(tenant, parsed, prompt, endpoint=self._endpoint.name)
        costing = (
            chain.costing
            if chain is not None
            else Costing.for_request(self._rt.prices, tenant.limits, parsed.model)
        )
        reservation, self._cap = await self._reserve_answer(tenant, parsed, costing, prompt)
        if chain is not None:
            # Only a request its caller may send claims a backend's headroom or probe slot,
            # for the tokens it was let through with (the cap, not what it asked).
            try:
                await self._route.claim(chain, tokens=reservation.cost.tokens)
            except ClientError:
                await self._rt.store.release(reservation)
                raise
        return Admission(
            tenant=tenant, request=parsed, provider=self._provider.name, costing=costing,
            prompt_tokens=prompt,
            reservation=reservation, admitted_at=time.perf_counter(),
        )  # fmt: skip

    def _within_budget(self, tenant: Tenant, parsed: ParsedRequest) -> ParsedRequest:
        """The model its budget lets it have (a policy's degrade thresholds), and no
        `priority` field of its own: the class is the gateway's to decide."""
        if "priority" in parsed.body:
            parsed = dataclasses.replace(parsed, rewrites={**parsed.rewrites, "priority": DROP})
        if not tenant.policy.degrade:
            return parsed
        fills = self._rt.usage_seen.fills(tenant.namespace)
        chosen = degrade(
            tenant.policy, tenant.caller.key, self._class, parsed.model, fills, now=time.time()
        )
        if chosen.threshold is None:
            return parsed
        check_model(tenant, chosen.model)
        self._rt.metrics.degraded.labels(tenant.namespace, "budget").inc()
        return self._substitute(parsed, chosen.model)

    def _substitute(self, parsed: ParsedRequest, model: str) -> ParsedRequest:
        """Served by `model` instead, said to the client, charged at its price."""
        self._headers[SUBSTITUTED_HEADER] = f"{parsed.model} -> {model}"
        self._model = model
        return dataclasses.replace(
            parsed, model=model, rewrites={**parsed.rewrites, "model": model}
        )

    async def _reserve_answer(
        self, tenant: Tenant, parsed: ParsedRequest, costing: Costing, prompt: int
    ) -> tuple[Reservation, int | None]:
        """Reserve the prompt and the expected answer; with clamping, the completion cap to
        write: what the client asked (or the policy's default) lowered to what the budget
        still allows, so the provider itself cannot outrun it. A refusal by a token or
        dollar limit is retried with the answer that limit still fits, down to the policy's
        minimal answer (see quota/clamp.py)."""
        policy, times = tenant.policy, parsed.completion_multiplier
        want = expected_completion(policy, asked=parsed.max_output_tokens, stream=False)
        part = expected_completion(policy, asked=parsed.max_output_tokens, stream=parsed.stream)
        if not parsed.generates:
            want = part = 0
        clamp = policy.clamp_completion and parsed.generates
        floor = max(policy.min_completion_tokens, parsed.min_cap)
        decision = await self.decide(tenant, costing.estimate(prompt, part * times))
        for _ in range(MAX_CLAMP_TRIES):
            if decision.refusal is None:
                break
            fit = fit_within(decision.refusal, costing, completion=part * times) if clamp else None
            if fit is None:
                break
            if per_choice(fit, times) < floor:  # not even a minimal answer: say what it needs
                raise self.refused(
                    tenant,
                    at_minimum(
                        decision.refusal, costing, completion=part * times, minimum=floor * times
                    ),
                )
            want = part = min(part, per_choice(fit, times))
            decision = await self.decide(tenant, costing.estimate(prompt, part * times))
        self._rt.usage_seen.record(tenant.policy, decision.states, now=time.time())
        if decision.refusal is not None:
            raise self.refused(tenant, decision.refusal)
        assert decision.reservation is not None
        if not clamp:
            return decision.reservation, None
        room = room_after(decision.states, costing)
        cap = want if room is None else min(want, part + per_choice(room, times))
        return decision.reservation, cap

    def _cap_to_write(self, parsed: ParsedRequest) -> int | None:
        """The cap goes into the body when the client named none or a larger one."""
        asked = parsed.max_output_tokens
        if self._cap is None or (asked is not None and asked <= self._cap):
            return None
        return self._cap

    async def _count_prompt(self, parsed: ParsedRequest) -> int:
        encoding = encoding_name_for(parsed.model)
        counted = await self._rt.counter.count_texts(parsed.prompt_texts, encoding)
        return parsed.framing_tokens + counted

    def _too_large(self, size: int) -> PayloadTooLarge:
        limit = self._rt.limits.max_body_bytes
        return PayloadTooLarge(f"Request body of {size} bytes exceeds the limit of {limit} bytes.")

    async def on_response_headers(self, msg: ep.HttpHeaders) -> ep.ProcessingResponse:
        headers = header_map(msg)
        self._route.answered(headers)
        if not succeeded(headers):
            self.outcome = "upstream_error"
            reservation, self._reservation = self._reservation, None
            if reservation is not None and headers.get(":status") == "504":
                # Envoy stopped waiting for an answer the provider may have been billing:
                # charged as reserved, never refunded (an error answer bills nothing).
                await self._rt.store.settle(reservation, reservation.cost)
            elif reservation is not None:
                await self._rt.store.release(reservation)
            return replies.response_headers_reply(
                set_headers=self._headers, mode=replies.SKIP_RESPONSE_BODY_MODE
            )
        if self._admission is None:
            return replies.response_headers_reply(set_headers=self._headers)
        self._reservation = None  # the answer settles it from now on
        if self._route.plan is not None:
            self._admission = self._route.served(self._admission, headers)
            self._model = self._admission.request.model
        try:
            decoder = decoder_for(
                headers.get("content-encoding", ""), max_out=4 * self._rt.limits.max_body_bytes
            )
        except BadGateway as error:  # unreadable: nothing reaches the client, all is charged
            await settle_reserved(self._rt, self._admission, self._admission.reservation)
            return self.refuse(error)
        kind = StreamedAnswer if _is_stream(headers) else PlainAnswer
        self._answer = kind(
            runtime=self._rt, admission=self._admission, provider=self._provider, decoder=decoder
        )
        # A decoded answer goes on uncompressed, in chunks of another length.
        remove = ("content-encoding", "content-length") if decoder is not None else ()
        return replies.response_headers_reply(set_headers=self._headers, remove=remove)

    async def on_response_body(self, msg: ep.HttpBody) -> ep.ProcessingResponse:
        if self._answer is None:
            return replies.RESPONSE_BODY_CONTINUE
        reply = await self._answer.on_body(msg)
        if self._answer.cut is not None:
            self.outcome = "cut"
        elif msg.end_of_stream:
            self.outcome = "ok"
        return reply

    @property
    def holds(self) -> bool:
        answer_holds = self._answer is not None and self._answer.holds
        capacity = self._capacity is not None or (self._turn is not None and self._turn.waiting)
        return self._reservation is not None or answer_holds or self._route.holds or capacity

    async def settle_at_end(self) -> None:
        self._route.finish()
        if self._turn is not None and self._turn.waiting:  # its client left while it waited
            self._turn.gone()
            await self._turn.leave()
        reservation, self._reservation = self._reservation, None
        if reservation is not None and not self._forwarded:  # nothing was sent
            await self._rt.store.release(reservation)
        elif reservation is not None:  # admitted, no answer yet: charged as reserved
            await self._rt.store.settle(reservation, reservation.cost)
        if self._answer is not None:
            await self._answer.settle()
        capacity, self._capacity = self._capacity, None
        if capacity is not None:  # the provider's count: the request as it was let through
            await self._rt.store.settle(capacity, capacity.cost)


def _is_stream(response_headers: Mapping[str, str]) -> bool:
    return response_headers.get("content-type", "").startswith("text/event-stream")
