"""One attempt of a routed request: the upstream phase of a failover cluster.

Envoy runs this stream per attempt, after it chose the host (see
`extproc/kube/envoy_failover.py`). The governed stream has already identified the caller,
reserved and rewritten the body in the client's format; this one only makes the attempt
fit its backend: the backend's model, the body translated when the backend speaks another
API, the path, the backend's credential (every other credential header removed: header
changes of an earlier attempt are still in place), and the answer translated back so the
governed stream and the client read their own format. It answers for nothing else: the
governed stream counts, settles and reports the request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf import struct_pb2, text_format

from extproc._json import decode_object
from extproc.backends.health import Outcome
from extproc.errors import BadRequest, ClientError, Unavailable
from extproc.gate import replies
from extproc.gate.admission import Tenant
from extproc.gate.attempts import outcome_of, rejected, report
from extproc.gate.credentials import CLIENT_CREDENTIAL_HEADERS, Secret
from extproc.gate.endpoints import PROVIDERS
from extproc.gate.failover import (
    ATTEMPT_HEADER,
    BACKEND_HEADER,
    HOST_METADATA_ATTRIBUTE,
    PROVIDER_METADATA_NAMESPACE,
    ROUTE_METADATA_NAMESPACE,
)
from extproc.gate.key_ring import RingKey
from extproc.gate.processor import Processor, header_map, succeeded
from extproc.gate.routing import ANTHROPIC_CLIENT_HEADERS
from extproc.gate.runtime import Runtime
from extproc.providers.translate import StreamTranslator, Translation
from extproc.providers.translate.registry import translation_for

_Mode = processing_mode_pb2.ProcessingMode
ANTHROPIC_VERSION = "2023-06-01"  # when an OpenAI client is served by Anthropic
_EXT_PROC = "envoy.filters.http.ext_proc"
# The upstream filter's configured mode (envoy_failover.upstream_filters), restated because
# a header reply must carry one; answers are read only when they must be translated.
UPSTREAM_MODE = _Mode(
    request_body_mode=_Mode.BUFFERED,
    response_header_mode=_Mode.SEND,
    response_body_mode=_Mode.NONE,
    request_trailer_mode=_Mode.SKIP,
    response_trailer_mode=_Mode.SKIP,
)
_READ_STREAM = _Mode(response_body_mode=_Mode.STREAMED)
_READ_WHOLE = _Mode(response_body_mode=_Mode.BUFFERED)


@dataclass(frozen=True, slots=True)
class Target:
    """The backend one attempt goes to."""

    provider: str
    model: str
    max_tokens: int
    key_pool: str = ""  # "": the provider's own key


@dataclass(frozen=True, slots=True)
class RouteFacts:
    """What the governed stream left in dynamic metadata (`routing.RoutePlan.metadata`)."""

    client: str
    path: str
    stream: bool
    backends: tuple[Target, ...]
    headers: Mapping[str, str]

    @classmethod
    def read(cls, route: struct_pb2.Struct) -> RouteFacts:
        fields = route.fields
        backends = []
        pools = [v.string_value for v in fields["pools"].list_value.values]
        for index, value in enumerate(fields["backends"].list_value.values):
            provider, rest = value.string_value.split("/", 1)  # models may hold a '/'
            model, max_tokens = rest.rsplit("/", 1)
            pool = pools[index] if index < len(pools) else ""
            backends.append(Target(provider, model, int(max_tokens), pool))
        headers = {k: v.string_value for k, v in fields["headers"].struct_value.fields.items()}
        return cls(
            client=fields["client"].string_value,
            path=fields["path"].string_value,
            stream=fields["stream"].bool_value,
            backends=tuple(backends),
            headers=headers,
        )


def is_upstream_attempt(request: ep.ProcessingRequest) -> bool:
    return ROUTE_METADATA_NAMESPACE in request.metadata_context.filter_metadata


def host_provider(request: ep.ProcessingRequest) -> str | None:
    """The provider Envoy's chosen host belongs to (endpoint metadata; Envoy hands
    metadata attributes over as protobuf text)."""
    attributes = request.attributes.get(_EXT_PROC)
    if attributes is None or HOST_METADATA_ATTRIBUTE not in attributes.fields:
        return None
    metadata = base_pb2.Metadata()
    try:
        text_format.Parse(attributes.fields[HOST_METADATA_ATTRIBUTE].string_value, metadata)
    except text_format.ParseError:
        return None
    ours = metadata.filter_metadata.get(PROVIDER_METADATA_NAMESPACE)
    value = ours.fields.get("provider") if ours is not None else None
    return value.string_value if value is not None else None


class UpstreamProcessor(Processor):
    mode = UPSTREAM_MODE

    def __init__(
        self, *, runtime: Runtime, request_headers: Mapping[str, str], first: ep.ProcessingRequest
    ) -> None:
        self._facts = RouteFacts.read(
            first.metadata_context.filter_metadata[ROUTE_METADATA_NAMESPACE]
        )
        super().__init__(
            runtime=runtime,
            request_headers=request_headers,
            provider=PROVIDERS[self._facts.client],  # errors in the client's own format
        )
        self._host = host_provider(first)
        self._target: Target | None = None
        self._translation: Translation | None = None
        self._include_usage = self._facts.client == "anthropic"
        self._stream: StreamTranslator | None = None
        self._status = 0
        self._reported = False
        self._key: RingKey | None = None  # the pool key this attempt carries
        self.upstream = "-"

    async def on_request_headers(
        self, msg: ep.HttpHeaders, metadata: base_pb2.Metadata | None
    ) -> ep.ProcessingResponse:
        try:
            target = self._choose()
        except ClientError as error:
            return self.refuse(error)
        self._target = target
        self._translation = translation_for(self._facts.client, target.provider)
        try:
            secret = self._credential(target)
        except ClientError as error:
            return self.refuse(error)
        backend = PROVIDERS[target.provider]
        path = self._translation.backend_path if self._translation else self._facts.path
        headers = {
            backend.credential_header: backend.credential_value(secret.reveal()),
            ":path": path,
            "content-type": "application/json",
        }
        remove = [h for h in CLIENT_CREDENTIAL_HEADERS if h != backend.credential_header]
        if target.provider == "anthropic":
            headers["anthropic-version"] = self._facts.headers.get(
                "anthropic-version", ANTHROPIC_VERSION
            )
            if "anthropic-beta" in self._facts.headers:
                headers["anthropic-beta"] = self._facts.headers["anthropic-beta"]
            else:
                remove.append("anthropic-beta")
        else:
            remove += ANTHROPIC_CLIENT_HEADERS
        return replies.request_headers_reply(
            set_headers=headers, remove=remove, mode=self.mode, clear_route_cache=False
        )

    def _credential(self, target: Target) -> Secret:
        """The backend's pool key (its turn, among the usable ones), else the provider's."""
        if target.key_pool:
            key = self._rt.key_chooser.require(
                self._rt.keys.current, target.key_pool, now=time.time()
            )
            self._key = key
            self._rt.metrics.key_uses.labels(key.pool, key.name).inc()
            return key.secret
        secret = self._rt.credentials.current.get(target.provider)
        if secret is None:
            raise Unavailable(f"no provider credential for {target.provider}")
        return secret

    def _choose(self) -> Target:
        attempt = self._request_headers.get(ATTEMPT_HEADER, "1")
        index = int(attempt) - 1 if attempt.isdigit() and attempt != "0" else 0
        if index >= len(self._facts.backends):
            raise Unavailable("Every backend of this model route failed.")
        target = self._facts.backends[index]
        if self._host is not None and self._host != target.provider:
            # The composite cluster skipped a sub-cluster without hosts: this attempt's
            # host is not the backend it was meant for, and must not get its request.
            raise Unavailable(f"backend {target.provider}/{target.model} has no host")
        return target

    async def admit_headers(self, tenant: Tenant, *, has_body: bool) -> None:
        """Never called: the governed stream admitted the request."""

    async def on_request_body(self, msg: ep.HttpBody) -> ep.ProcessingResponse:
        assert self._target is not None, "Envoy sends the body only after the headers passed"
        try:
            body = decode_object(msg.body)
            if self._translation is None:
                sent = {**body, "model": self._target.model}
            else:
                sent = self._translation.request(
                    body, model=self._target.model, default_max_tokens=self._target.max_tokens
                )
        except BadRequest as error:
            return self.refuse(error)
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            self._include_usage = True
        return replies.sized_body_reply("request_body", _dumps(sent))

    async def on_response_headers(self, msg: ep.HttpHeaders) -> ep.ProcessingResponse:
        assert self._target is not None
        headers = header_map(msg)
        self._status = int(headers.get(":status", "0") or 0)
        self._report(outcome_of(self._target.provider, self._status, headers))
        served = {BACKEND_HEADER: f"{self._target.provider}/{self._target.model}"}
        if self._key is not None:
            served[BACKEND_HEADER] += f";key={self._key.label}"
            if self._status == 401:
                rejected(self._rt, self._key)
        if self._translation is None:
            return replies.response_headers_reply(set_headers=served)
        streamed = headers.get("content-type", "").startswith("text/event-stream")
        if succeeded(headers) and streamed:
            self._stream = self._translation.stream(include_usage=self._include_usage)
            return replies.response_headers_reply(
                set_headers=served, remove=("content-length",), mode=_READ_STREAM
            )
        return replies.response_headers_reply(set_headers=served, mode=_READ_WHOLE)

    async def on_response_body(self, msg: ep.HttpBody) -> ep.ProcessingResponse:
        translation = self._translation
        if translation is None:
            return replies.RESPONSE_BODY_CONTINUE
        if self._stream is not None:
            out = self._stream.feed(msg.body)
            if msg.end_of_stream:
                out += self._stream.close()
            return replies.response_body_reply(out)
        if 200 <= self._status < 300:
            try:
                answer = _dumps(translation.answer(decode_object(msg.body)))
            except BadRequest:  # not JSON: the governed stream reports what it cannot read
                return replies.RESPONSE_BODY_CONTINUE
            return replies.sized_body_reply("response_body", answer)
        status, body = translation.error(self._status, msg.body)
        changed = {":status": str(status)} if status != self._status else {}
        return replies.sized_body_reply("response_body", body, set_headers=changed)

    def _report(self, outcome: Outcome) -> None:
        assert self._target is not None
        self._reported = True
        backend = f"{self._target.provider}/{self._target.model}"
        report(self._rt, backend, outcome, answered=self._status != 0)

    @property
    def holds(self) -> bool:
        """An attempt that went out and never got response headers (connect failure, reset,
        first-byte timeout) is reported as failed when its stream ends."""
        return self._target is not None and not self._reported

    def count_finished(self) -> None:
        """The governed stream counts the request; an attempt is not one."""

    async def settle_at_end(self) -> None:
        """No answer: Envoy's connect failure, reset or first-byte timeout, or the client
        gone (which must never open a healthy backend's breaker): the two cannot be told
        apart here, so it is counted (`no_answer`) but neutral for the breaker."""
        if self._target is not None and not self._reported:
            self._report(Outcome(ok=None))


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
