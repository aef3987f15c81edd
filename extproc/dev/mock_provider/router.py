"""Request routing: provider endpoints, scripting, auth, recording, and the `/_mock/` API.

Everything here is synchronous and returns a finished `Reply` for ordinary requests, so the
HTTP layer can answer from `data_received` without a task. Bodies above `OFFLOAD_BYTES` are
parsed, hashed and token-counted on a worker thread instead, so one huge prompt does not
stall every other connection on the loop.

Every request outside `/_mock/` is recorded, whatever its path or method (a test asks the
recorder whether a refused request reached the upstream); generation routes are in
`openai`/`anthropic`, the others (models, files, token counting) in `objects`.

With per-key rate limits (`ratelimit`), a request that would be answered (scripted, authorised,
valid) is charged to its key and refused with a 429 when over; every other answer on a provider
route carries the key's limits uncharged, except a 401 (no key was accepted to report on).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from functools import partial
from typing import Any
from urllib.parse import parse_qs

from extproc.dev.mock_provider import objects
from extproc.dev.mock_provider.anthropic import AnthropicDialect
from extproc.dev.mock_provider.common import (
    ApiError,
    Completion,
    Dialect,
    Headers,
    ParsedRequest,
    dumps,
    random_id,
)
from extproc.dev.mock_provider.completions import CompletionsDialect
from extproc.dev.mock_provider.encoding import coding_for, encode
from extproc.dev.mock_provider.http import Deferred, Reply
from extproc.dev.mock_provider.openai import OpenAIDialect
from extproc.dev.mock_provider.parser import HttpError, Request
from extproc.dev.mock_provider.ratelimit import RateLimiter, headers_for
from extproc.dev.mock_provider.recorder import Recorder, Stats, is_credential_header
from extproc.dev.mock_provider.responses import ResponsesDialect
from extproc.dev.mock_provider.script import DEFAULT, Script, script_from
from extproc.dev.mock_provider.text import answer_words, plan, seed_for
from extproc.providers.tokens import count, encoding_name_for

OFFLOAD_BYTES = 64 * 1024
SSE = "text/event-stream; charset=utf-8"

_OPENAI = OpenAIDialect()
_ANTHROPIC = AnthropicDialect()
_DIALECTS: dict[str, Dialect] = {
    d.path: d for d in (_OPENAI, _ANTHROPIC, ResponsesDialect(), CompletionsDialect())
}
_BY_PROVIDER: dict[str, Dialect] = {"openai": _OPENAI, "anthropic": _ANTHROPIC}
_BAD_JSON = object()


class Router:
    """Implements `http.App` for the mock: one instance per `MockProvider`."""

    def __init__(
        self,
        *,
        stats: Stats,
        recorder: Recorder,
        require_key: str | None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._stats = stats
        self._recorder = recorder
        self._require_key = require_key
        self._limiter = limiter

    def handle(self, request: Request) -> Reply | Deferred:
        if request.path.startswith("/_mock/"):
            return self._control(request)
        self._stats.requests += 1
        dialect = _DIALECTS.get(request.path)
        if dialect is None or request.method != "POST":
            payload = _load_json(request.body) if request.body else None
            self._recorder.record(request, payload)
            return self._other(request, payload)
        if len(request.body) > OFFLOAD_BYTES:
            return partial(self._offloaded, dialect, request)
        payload = _load_json(request.body)
        self._recorder.record(request, payload)
        return self._respond(dialect, request, payload)

    def http_error(self, path: str | None, error: HttpError) -> Reply:
        dialect = _DIALECTS.get(path or "", _OPENAI)
        return Reply(error.status, body=dialect.error_body(error.status, error.message))

    async def _offloaded(self, dialect: Dialect, request: Request) -> Reply:
        payload = await asyncio.to_thread(_load_json, request.body)
        self._recorder.record(request, payload)
        return await asyncio.to_thread(self._respond, dialect, request, payload)

    def _respond(self, dialect: Dialect, request: Request, payload: object) -> Reply:
        """Script, auth, scripted status, validation, rate limit, then the answer; errors in
        order."""
        script = DEFAULT
        try:
            script = script_from(request, model=_model_of(payload))
            self._admit(dialect, request, script)
            if payload is _BAD_JSON:
                raise ApiError(400, "We could not parse the JSON body of your request.")
            parsed = dialect.parse(payload)
            completion = _complete(dialect, request, parsed, script)
            limits = self._charge(dialect, request, _token_cost(parsed, completion))
        except ApiError as exc:
            return _encoded(self._refusal(dialect, request, exc, script), script, request)
        reply = _answer(dialect, completion, parsed, script, limits)
        return _encoded(reply, script, request)

    def _other(self, request: Request, payload: object) -> Reply:
        """Models, files, token counting, embeddings (`objects`); else the provider's 404 or
        405."""
        generation = _DIALECTS.get(request.path)
        if generation is not None:
            error = ApiError(405, f"{request.method} is not allowed")
            return self._refusal(generation, request, error, DEFAULT)
        found = objects.find(request.path)
        if found is None:
            dialect = _BY_PROVIDER[objects.provider_of_unknown(request.path)]
            error = ApiError(404, f"Invalid URL ({request.method} {request.path})")
            return self._refusal(dialect, request, error, DEFAULT)
        endpoint, item = found
        dialect = _BY_PROVIDER[endpoint.provider_for(request)]
        script = DEFAULT
        try:
            answer = endpoint.answers.get(request.method)
            if answer is None:
                raise ApiError(405, f"{request.method} is not allowed")
            script = script_from(request, model=_model_of(payload))
            self._admit(dialect, request, script)
            if payload is _BAD_JSON:
                raise ApiError(400, "We could not parse the JSON body of your request.")
            answered = answer(request, item, payload)
            if endpoint.cost is None:
                limits = self._limits(dialect, request)
            else:
                limits = self._charge(dialect, request, endpoint.cost(answered))
        except ApiError as exc:
            return _encoded(self._refusal(dialect, request, exc, script), script, request)
        body, headers = dumps(answered).encode(), (*_request_id(dialect), *limits)
        reply = Reply(200, body=body, headers=headers, delay=script.delay, failure=script.failure)
        return _encoded(reply, script, request)

    def _charge(self, dialect: Dialect, request: Request, tokens: int) -> Headers:
        """Charge the request to its key: the provider's rate-limit headers, or a 429."""
        if self._limiter is None:
            return ()
        decision = self._limiter.admit(_api_key(dialect, request), tokens=tokens)
        headers = headers_for(dialect.provider, decision)
        if not decision.admitted:
            raise ApiError(429, decision.message, headers=headers)
        return headers

    def _limits(self, dialect: Dialect, request: Request) -> Headers:
        """The key's rate-limit headers, uncharged."""
        if self._limiter is None:
            return ()
        return headers_for(dialect.provider, self._limiter.peek(_api_key(dialect, request)))

    def _refusal(self, dialect: Dialect, request: Request, exc: ApiError, script: Script) -> Reply:
        """The error answer, with the key's limits unless it is an auth failure."""
        if exc.headers or exc.status == 401:
            return _error(dialect, exc, script, exc.headers)
        return _error(dialect, exc, script, self._limits(dialect, request))

    def _admit(self, dialect: Dialect, request: Request, script: Script) -> None:
        """Raise unless the key passed and no error status was scripted."""
        self._authorize(dialect, request)
        if script.status is not None:
            raise ApiError(script.status, f"mock error {script.status} (x-mock-status)")

    def _authorize(self, dialect: Dialect, request: Request) -> None:
        """With `require_key` (one key, or several separated by commas: a key pool under
        test): exactly one credential header, the dialect's, with one of the keys."""
        if self._require_key is None:
            return
        found = [(name, value) for name, value in request.headers if is_credential_header(name)]
        if len(found) == 1 and found[0][0] == dialect.key_header:
            value, prefix = found[0][1], dialect.key_prefix
            scheme_ok = value[: len(prefix)].lower() == prefix.lower()
            sent = value[len(prefix) :].encode()
            keys = self._require_key.split(",")
            if scheme_ok and any(hmac.compare_digest(sent, k.encode()) for k in keys):
                return
        raise ApiError(401, f"invalid API key: send exactly one {dialect.key_header} header")

    def _control(self, request: Request) -> Reply:
        if request.method != "GET":
            return _error(_OPENAI, ApiError(405, f"{request.method} is not allowed"), DEFAULT)
        if request.path == "/_mock/health":
            return Reply(200, body=b'{"status":"ok"}')
        if request.path == "/_mock/stats":
            return Reply(200, body=dumps(self._stats.as_dict()).encode())
        tags = parse_qs(request.query).get("tag")
        tag = tags[0] if tags else None
        if request.path == "/_mock/requests":
            return Reply(200, body=dumps(self._recorder.query(tag)).encode())
        if request.path == "/_mock/counts":
            return Reply(200, body=dumps(self._recorder.counts(tag)).encode())
        return _error(_OPENAI, ApiError(404, f"no mock endpoint {request.path}"), DEFAULT)


def _complete(
    dialect: Dialect, request: Request, parsed: ParsedRequest, script: Script
) -> Completion:
    """Every generated choice has the same planned length; returned choices differ in
    words (seeded by the body and the choice's index), generated-only ones (`best_of`) are
    only billed."""
    encoding = encoding_name_for(parsed.model)
    visible, reasoning, truncated = plan(
        requested=script.completion_tokens,
        reasoning=script.reasoning_tokens,
        max_tokens=parsed.max_tokens,
    )
    seed = seed_for(request.body)
    choices = [answer_words(seed + index, visible) for index in range(parsed.choices)]
    shown = sum(count(" ".join(words), encoding) for words in choices)
    unreturned = (parsed.generated - parsed.choices) * visible
    prompt = parsed.prompt_tokens(encoding)
    return Completion(
        id=dialect.new_id(),
        created=int(time.time()),
        model=parsed.model,
        words=choices[0] if choices else [],
        prompt_tokens=prompt,
        completion_tokens=shown + unreturned + parsed.generated * reasoning,
        truncated=truncated,
        reasoning_tokens=parsed.generated * reasoning,
        cached_tokens=min(script.cached_tokens, prompt),
        others=tuple(choices[1:]),
    )


def _answer(
    dialect: Dialect, c: Completion, parsed: ParsedRequest, script: Script, limits: Headers
) -> Reply:
    headers = (*_request_id(dialect), *limits)
    if not parsed.stream:
        body = dialect.completion_body(c, omit_usage=script.omit_usage)
        return Reply(200, body=body, headers=headers, delay=script.delay, failure=script.failure)
    events = dialect.stream_events(
        c,
        per_chunk=script.tokens_per_chunk,
        send_usage=parsed.include_usage and not script.omit_usage,
    )
    return Reply(
        200,
        headers=headers,
        content_type=SSE,
        delay=script.delay,
        stream=events,
        chunk_delay=script.chunk_delay,
        failure=script.failure,
    )


def _error(dialect: Dialect, exc: ApiError, script: Script, limits: Headers = ()) -> Reply:
    body = dialect.error_body(exc.status, exc.message)
    headers = (*_request_id(dialect), *limits)
    return Reply(exc.status, body=body, headers=headers, delay=script.delay, failure=script.failure)


def _token_cost(parsed: ParsedRequest, c: Completion) -> int:
    """The providers' admission estimate: the prompt plus the completion cap of every
    generated choice (no cap: what the mock will generate)."""
    cap = c.completion_tokens if parsed.max_tokens is None else parsed.max_tokens * parsed.generated
    return c.prompt_tokens + cap


def _api_key(dialect: Dialect, request: Request) -> str:
    """The key the provider would bill: the dialect's credential header, scheme removed,
    scoped by provider (each provider meters its own keys: one mock serving both APIs with
    one key must not give them one bucket)."""
    value = request.header(dialect.key_header) or ""
    prefix = dialect.key_prefix
    if value[: len(prefix)].lower() == prefix.lower():
        value = value[len(prefix) :]
    return f"{dialect.provider}:{value}"


def _model_of(payload: object) -> str | None:
    """The body's `model` (what `x-mock-only-model` compares), when it is a string."""
    model = payload.get("model") if isinstance(payload, dict) else None
    return model if isinstance(model, str) else None


def _encoded(reply: Reply, script: Script, request: Request) -> Reply:
    return encode(reply, coding_for(script.content_encoding, request.header("accept-encoding")))


def _request_id(dialect: Dialect) -> tuple[tuple[str, str], ...]:
    return ((dialect.request_id_header, random_id("req_", 24)),)


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _BAD_JSON
