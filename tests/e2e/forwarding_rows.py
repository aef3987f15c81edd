"""The rows of the forwarding table (issue 13, tests/e2e/test_forwarding_table.py).

A row is a request as a client would send it and the verdict the contract gives it. Header
values and targets may hold `{key}` (the row's namespace's gateway key), `{other}` (a second
valid gateway key) and `{leak}` (a client-side secret that must never reach an upstream); the
test fills them in. By default a row sends its gateway key as `Authorization: Bearer`, asks
for `accept-encoding: gzip, deflate` as the SDKs do, and POSTs a valid body for its path.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass

from tests.e2e.forwarding import Either, Expect, Forwarded, Refused

CHAT = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
CLAUDE = json.dumps(
    {"model": "claude-haiku-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
).encode()
DEFAULT = b"<default>"  # the valid body for the row's path (none for GET/DELETE)

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"


@dataclass(frozen=True)
class Row:
    id: str
    expect: Expect
    method: str = "POST"
    target: str = OPENAI_PATH
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = DEFAULT
    identity: str = "authorization"  # header carrying `Bearer {key}` / `{key}`; "" for none
    namespace: str = "fw"
    chunked: bool = False
    trailers: tuple[tuple[str, str], ...] = ()
    # After the refusal, a valid request with the same key is refused 429 by this limit:
    # the refused request was counted against the request limits.
    counted_by: str | None = None

    def request_body(self) -> bytes | None:
        if self.body is not DEFAULT:
            return self.body
        if self.method in ("GET", "DELETE", "OPTIONS"):
            return None
        path = self.target.split("?", 1)[0]
        if "messages" in path:
            return CLAUDE
        return CHAT if "completions" in path else b"{}"


def _o(path: str = OPENAI_PATH, status: int = 200) -> Forwarded:
    return Forwarded("openai", path, status)


def _a(path: str = ANTHROPIC_PATH, status: int = 200) -> Forwarded:
    return Forwarded("anthropic", path, status)


NOT_FOUND_O = Refused(404, "openai", "unknown_url")
NOT_FOUND_A = Refused(404, "anthropic", "not_found_error")
UNAUTH_O = Refused(401, "openai", None)
UNAUTH_A = Refused(401, "anthropic", "authentication_error")
MALFORMED_O = Refused(400, "openai", None)
MALFORMED_A = Refused(400, "anthropic", "invalid_request_error")
A_KEY = "x-api-key"


def _405(provider: str) -> Refused:
    kind = "method_not_allowed" if provider == "openai" else "invalid_request_error"
    return Refused(405, provider, kind, allow="POST")


def _415(provider: str) -> Refused:
    return Refused(415, provider, None if provider == "openai" else "invalid_request_error")


def _leak(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((name, "{leak}") for name in names)


RESPONSES = json.dumps({"model": "gpt-4o", "input": "hi"}).encode()
COMPLETION = json.dumps({"model": "gpt-4o", "prompt": "hi"}).encode()
EMBEDDING = json.dumps({"model": "gpt-4o", "input": "hi"}).encode()

GOVERNED = [
    Row("chat", _o()),
    Row("messages-x-api-key", _a(), target=ANTHROPIC_PATH, identity=A_KEY),
    Row("messages-bearer", _a(), target=ANTHROPIC_PATH),
    Row("chat-harmless-query", _o(), target=OPENAI_PATH + "?x=1"),
    Row("responses", _o("/v1/responses"), target="/v1/responses", body=RESPONSES),
    Row("completions-legacy", _o("/v1/completions"), target="/v1/completions", body=COMPLETION),
    Row("embeddings", _o("/v1/embeddings"), target="/v1/embeddings", body=EMBEDDING),
]

PATHS = [
    Row("double-slash", _o(), target="/v1//chat/completions"),
    Row("dot-segment", _o(), target="/v1/./chat/completions"),
    Row("dot-dot-segment", _o(), target="/v1/x/../chat/completions"),
    Row("leading-double-slash", _o(), target="//v1/chat/completions"),
    Row("messages-double-slash", _a(), target="/v1//messages", identity=A_KEY),
    Row("messages-dot-segment", _a(), target="/v1/./messages", identity=A_KEY),
    Row("escaped-slash", Either(_o(), (MALFORMED_O,)), target="/v1/chat%2Fcompletions"),
    Row("escaped-slash-lower", Either(_o(), (MALFORMED_O,)), target="/v1/chat%2fcompletions"),
    Row(
        "escaped-backslash",
        Either(_o(), (MALFORMED_O, NOT_FOUND_O)),
        target="/v1/chat%5Ccompletions",
    ),
    Row(
        "escaped-letter",
        Either(_o(), (MALFORMED_O, NOT_FOUND_O)),
        target="/v1/chat/%63ompletions",
    ),
    Row(
        "messages-escaped-slash",
        Either(None, (MALFORMED_A, NOT_FOUND_A)),
        target="/v1/messages%2Fbatches",
        identity=A_KEY,
    ),
    Row("upper-case-v1", NOT_FOUND_O, target="/V1/chat/completions"),
    Row("path-parameter", NOT_FOUND_O, target="/v1/chat/completions;x=1"),
    Row("trailing-slash", NOT_FOUND_O, target="/v1/chat/completions/"),
    Row("messages-trailing-slash", NOT_FOUND_A, target="/v1/messages/", identity=A_KEY),
    Row("messages-path-parameter", NOT_FOUND_A, target="/v1/messages;x=1", identity=A_KEY),
    Row("root", NOT_FOUND_O, method="GET", target="/"),
    Row("mock-test-api", NOT_FOUND_O, method="GET", target="/_mock/requests"),
]

METHODS = [
    Row("get-chat", _405("openai"), method="GET"),
    Row("put-chat", _405("openai"), method="PUT"),
    Row("patch-chat", _405("openai"), method="PATCH"),
    Row("options-chat", _405("openai"), method="OPTIONS"),
    Row("get-messages", _405("anthropic"), method="GET", target=ANTHROPIC_PATH, identity=A_KEY),
    Row(
        "delete-messages", _405("anthropic"), method="DELETE", target=ANTHROPIC_PATH, identity=A_KEY
    ),
    Row("stored-completion", NOT_FOUND_O, method="GET", target="/v1/chat/completions/chatcmpl-1"),
    Row(
        "stored-completion-delete",
        NOT_FOUND_O,
        method="DELETE",
        target="/v1/chat/completions/chatcmpl-1",
    ),
]

OBJECTS = [
    Row("files-list", NOT_FOUND_O, method="GET", target="/v1/files"),
    Row("files-upload", NOT_FOUND_O, target="/v1/files"),
    Row(
        "file-get-not-opened",
        NOT_FOUND_O,
        method="GET",
        target="/v1/files/file-1",
        namespace="fw-other",
    ),
    Row(
        "file-delete-not-opened",
        NOT_FOUND_O,
        method="DELETE",
        target="/v1/files/file-1",
        namespace="fw-other",
    ),
    Row("batches-create", NOT_FOUND_O, target="/v1/batches"),
    Row("batch-get", NOT_FOUND_O, method="GET", target="/v1/batches/batch_1"),
    Row("fine-tuning-jobs", NOT_FOUND_O, method="GET", target="/v1/fine_tuning/jobs"),
    Row("assistants-create", NOT_FOUND_O, target="/v1/assistants"),
    Row("thread-messages", NOT_FOUND_O, method="GET", target="/v1/threads/thread_1/messages"),
    Row("vector-stores", NOT_FOUND_O, method="GET", target="/v1/vector_stores"),
    Row("stored-response", NOT_FOUND_O, method="GET", target="/v1/responses/resp_1"),
    Row("uploads", NOT_FOUND_O, target="/v1/uploads"),
    Row("organization-users", NOT_FOUND_O, method="GET", target="/v1/organization/users"),
    Row("admin-keys", NOT_FOUND_O, method="GET", target="/v1/organization/admin_api_keys"),
    Row("message-batches", NOT_FOUND_A, target="/v1/messages/batches", identity=A_KEY),
    Row(  # built in for every namespace: not billed, request limits only, Anthropic only
        "count-tokens-built-in",
        _a("/v1/messages/count_tokens"),
        target="/v1/messages/count_tokens",
        identity=A_KEY,
        namespace="fw-other",
    ),
]

IDENTITY = [
    Row("no-key-unknown-path", UNAUTH_O, method="GET", target="/v1/files", identity=""),
    Row("no-key-anthropic-path", UNAUTH_A, target="/v1/messages/batches", identity=""),
    Row("no-key-governed", UNAUTH_O, identity=""),
    Row("wrong-key", UNAUTH_O, identity="", headers=(("authorization", "Bearer {leak}"),)),
    Row("key-only-in-query", UNAUTH_O, target=OPENAI_PATH + "?key={key}", identity=""),
    Row(
        "key-only-in-query-anthropic",
        UNAUTH_A,
        target=ANTHROPIC_PATH + "?api_key={key}",
        identity="",
    ),
    Row("key-only-in-cookie", UNAUTH_O, identity="", headers=(("cookie", "api_key={key}"),)),
]

MALFORMED = [
    # Envoy's own replies (its HTTP/1 codec refuses a header name with a space).
    Row("malformed-header-name", MALFORMED_O, headers=(("x-bad header", "1"),)),
    Row(
        "malformed-header-name-anthropic",
        MALFORMED_A,
        target=ANTHROPIC_PATH,
        identity=A_KEY,
        headers=(("x-bad header", "1"),),
    ),
]

ROUTES = [
    Row("models-opened", _o("/v1/models"), method="GET", target="/v1/models"),
    Row(
        "models-every-namespace",
        _o("/v1/models"),
        method="GET",
        target="/v1/models",
        namespace="fw-other",
    ),
    Row("file-get-opened", _o("/v1/files/file-1"), method="GET", target="/v1/files/file-1"),
    Row("file-delete-opened", _o("/v1/files/file-1"), method="DELETE", target="/v1/files/file-1"),
    Row(
        "count-tokens-opened",
        _a("/v1/messages/count_tokens"),
        target="/v1/messages/count_tokens",
        identity=A_KEY,
    ),
    Row(
        "opened-route-query-key",
        _o("/v1/models"),
        method="GET",
        target="/v1/models?api_key={leak}&limit=2",
    ),
]

CARRIERS = [
    Row("proxy-authorization", _o(), headers=(("Proxy-Authorization", "Basic {leak}"),)),
    Row(
        "proxy-authorization-twice",
        _a(),
        target=ANTHROPIC_PATH,
        identity=A_KEY,
        headers=(("proxy-authorization", "Bearer {leak}"), ("PROXY-AUTHORIZATION", "{leak}")),
    ),
    Row("cookie", _o(), headers=(("Cookie", "session={leak}"),)),
    Row(
        "cookie-twice",
        _a(),
        target=ANTHROPIC_PATH,
        identity=A_KEY,
        headers=(("cookie", "a={leak}"), ("cookie", "b={leak}")),
    ),
    Row("x-forwarded-authorization", _o(), headers=_leak("x-forwarded-authorization")),
    Row("openai-api-key", _o(), headers=_leak("openai-api-key")),
    Row(
        "anthropic-api-key",
        _a(),
        target=ANTHROPIC_PATH,
        identity=A_KEY,
        headers=_leak("anthropic-api-key"),
    ),
    Row("x-goog-api-key", _o(), headers=_leak("X-Goog-Api-Key")),
    Row("azure-api-key", _o(), headers=_leak("api-key")),
    Row("x-api-key-beside-bearer", _o(), headers=_leak("X-API-KEY")),
    Row("x-api-key-leak-anthropic", _a(), target=ANTHROPIC_PATH, headers=_leak("x-api-key")),
    Row("token-headers", _o(), headers=_leak("x-auth-token", "X-Access-Token")),
    Row(
        "security-token",
        _a(),
        target=ANTHROPIC_PATH,
        identity=A_KEY,
        headers=_leak("x-amz-security-token"),
    ),
    Row(
        "second-gateway-key",
        _o(),
        headers=(("x-api-key", "{other}"), ("api-key", "{other}")),
    ),
    Row(
        "upper-case-names",
        _o(),
        identity="",
        headers=(("AUTHORIZATION", "Bearer {key}"), ("COOKIE", "{leak}")),
    ),
    Row("underscore-api-key", Either(_o(), (MALFORMED_O,)), headers=_leak("custom_api_key")),
    Row(
        "underscore-x-api-key",
        Either(_a(), (MALFORMED_A,)),
        target=ANTHROPIC_PATH,
        headers=_leak("x_api_key"),
    ),
    Row("underscore-other", Either(_o(), (MALFORMED_O,)), headers=_leak("x_custom_auth")),
    Row("query-key", _o(), target=OPENAI_PATH + "?key={leak}"),
    Row("query-api-key", _o(), target=OPENAI_PATH + "?x=1&api_key={leak}"),
    Row(
        "query-api-key-dash-upper", _a(), target=ANTHROPIC_PATH + "?API-KEY={leak}", identity=A_KEY
    ),
    Row("query-access-token", _o(), target=OPENAI_PATH + "?access_token={leak}&Token={leak}"),
    Row(
        "query-token-repeated",
        _a(),
        target=ANTHROPIC_PATH + "?token={leak}&token={leak}",
        identity=A_KEY,
    ),
    Row("query-other-gateway-key", _o(), target=OPENAI_PATH + "?KEY={other}"),
    Row(
        "trailers",
        _o(),
        chunked=True,
        trailers=(("authorization", "Bearer {leak}"), ("x-api-key", "{leak}")),
        headers=(("trailer", "authorization, x-api-key"),),
    ),
    Row(
        "trailers-anthropic",
        _a(),
        target=ANTHROPIC_PATH,
        identity=A_KEY,
        chunked=True,
        trailers=(("x-api-key", "{leak}"), ("cookie", "{leak}")),
    ),
]

ENCODINGS = [
    Row(
        "content-encoding-gzip",
        _415("openai"),
        headers=(("content-encoding", "gzip"),),
        body=gzip.compress(CHAT),
    ),
    Row(
        "content-encoding-gzip-anthropic",
        _415("anthropic"),
        target=ANTHROPIC_PATH,
        identity=A_KEY,
        headers=(("Content-Encoding", "GZIP"),),
        body=gzip.compress(CLAUDE),
    ),
    Row(
        "content-encoding-deflate",
        _415("openai"),
        headers=(("content-encoding", "deflate"),),
        body=zlib.compress(CHAT),
    ),
    Row("content-encoding-br", _415("openai"), headers=(("content-encoding", "br"),)),
    Row("content-encoding-identity", _o(), headers=(("content-encoding", "identity"),)),
    Row(
        "gzip-answer-plain",
        _o(),
        headers=(("accept-encoding", "identity"), ("x-mock-content-encoding", "gzip")),
    ),
    Row(
        "gzip-answer-plain-anthropic",
        _a(),
        target=ANTHROPIC_PATH,
        identity=A_KEY,
        headers=(("x-mock-content-encoding", "gzip"),),
    ),
    Row(
        "gzip-answer-opened-route",
        _o("/v1/models"),
        method="GET",
        target="/v1/models",
        headers=(("x-mock-content-encoding", "gzip"),),
    ),
]

EMPTY = [
    Row("empty-body", MALFORMED_O, body=b"", namespace="empty-a", counted_by="one-request"),
    Row(
        "no-body",
        MALFORMED_A,
        target=ANTHROPIC_PATH,
        identity=A_KEY,
        body=None,
        namespace="empty-b",
        counted_by="one-request",
    ),
    Row(
        "whitespace-body",
        MALFORMED_O,
        body=b" \r\n\t ",
        namespace="empty-c",
        counted_by="one-request",
    ),
    Row(
        "empty-chunked-body",
        MALFORMED_A,
        target=ANTHROPIC_PATH,
        body=b"",
        chunked=True,
        namespace="empty-d",
        counted_by="one-request",
    ),
]

ROWS = (
    GOVERNED
    + PATHS
    + METHODS
    + OBJECTS
    + IDENTITY
    + MALFORMED
    + ROUTES
    + CARRIERS
    + ENCODINGS
    + EMPTY
)
NAMESPACES = ("fw", "fw-other", "empty-a", "empty-b", "empty-c", "empty-d")
