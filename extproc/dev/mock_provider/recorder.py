"""What the mock saw: a bounded log of requests and a few counters.

Tests behind the real Envoy cannot look inside the sidecar, so they ask the upstream what
reached it: whether a request arrived at all (a refusal must never be forwarded), on which
path and query, with which headers and trailers (only the injected provider key, never a
client credential), and which body. Records are selected by the `x-request-tag` header the
test sets, so parallel tests sharing one mock do not see each other's traffic.

Recording sits on the benchmark's hot path, so a record keeps references and a capped copy of
the body; the JSON shape is built only when a test asks (`GET /_mock/requests`).
"""

from __future__ import annotations

import base64
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any

from extproc.dev.mock_provider.parser import Request

CAPACITY = 10_000
BODY_CAP = 256 * 1024  # bytes of each body kept verbatim; `body_bytes` is the full length
STORE_BYTES = 64 * 1024 * 1024  # bodies kept in all, oldest records dropped beyond it

# Names that carry a credential wherever they appear (tokengate's forwarding contract), and
# name endings that do. A gateway that forwards any of these leaks a client secret upstream.
CREDENTIAL_NAMES = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "cookie",
        "x-forwarded-authorization",
    }
)
CREDENTIAL_SUFFIXES = ("api-key", "api_key", "-token", "_token")
# Where each API names its completion cap, the first present wins (`max_tokens` summary).
_MAX_FIELDS = ("max_completion_tokens", "max_output_tokens", "max_tokens")


def is_credential_header(name: str) -> bool:
    """Whether header `name` (lower-case) is one a credential travels in."""
    return name in CREDENTIAL_NAMES or name.endswith(CREDENTIAL_SUFFIXES)


@dataclass(slots=True)
class Stats:
    """Counters exposed at `/_mock/stats`. `requests` counts every request outside `/_mock/`.

    A stream is counted started once its response headers are written; it then ends as exactly
    one of completed (terminal chunk written), aborted (client went away first) or cut
    (`x-mock-fail: reset-after-chunks`). `replies_cut` counts plain answers cut after their
    head, `connections_reset` the resets instead of an answer (`x-mock-fail: reset`).
    """

    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_aborted: int = 0
    streams_cut: int = 0
    replies_cut: int = 0
    connections_reset: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Entry:
    """The parts of a request worth keeping (not the request: its body may be 64 MiB)."""

    seq: int
    tag: str | None
    method: str
    target: str
    path: str
    query: str
    version: str
    headers: list[tuple[str, str]]
    trailers: list[tuple[str, str]]
    body: bytes  # at most BODY_CAP bytes
    body_bytes: int
    summary: dict[str, Any]


class Recorder:
    """Ring buffer of the last `capacity` provider requests (and at most `store_bytes` of
    bodies), oldest dropped first."""

    def __init__(self, *, capacity: int = CAPACITY, store_bytes: int = STORE_BYTES) -> None:
        self._items: deque[_Entry] = deque(maxlen=capacity)
        self._store_bytes = store_bytes
        self._stored = 0
        self._seq = 0

    def record(self, request: Request, payload: object) -> None:
        """Remember `request`; `payload` is its parsed JSON body (None when it did not parse)."""
        fields = payload if isinstance(payload, dict) else {}
        model = fields.get("model")
        options = fields.get("stream_options")
        max_tokens = next((fields[f] for f in _MAX_FIELDS if isinstance(fields.get(f), int)), None)
        self._seq += 1
        body = request.body if len(request.body) <= BODY_CAP else request.body[:BODY_CAP]
        if len(self._items) == self._items.maxlen:
            self._stored -= len(self._items[0].body)
        self._items.append(
            _Entry(
                seq=self._seq,
                tag=request.header("x-request-tag"),
                method=request.method,
                target=request.target,
                path=request.path,
                query=request.query,
                version=request.version,
                headers=request.headers,
                trailers=request.trailers,
                body=body,
                body_bytes=len(request.body),
                summary={
                    "model": model if isinstance(model, str) else None,
                    "stream": fields.get("stream") is True,
                    "include_usage": isinstance(options, dict)
                    and options.get("include_usage") is True,
                    "max_tokens": max_tokens if isinstance(max_tokens, int) else None,
                },
            )
        )
        self._stored += len(body)
        while self._stored > self._store_bytes and len(self._items) > 1:
            self._stored -= len(self._items.popleft().body)

    def query(self, tag: str | None) -> list[dict[str, Any]]:
        """Records whose tag equals `tag`, oldest first; every record when `tag` is None."""
        return [_render(e) for e in self._items if tag is None or e.tag == tag]

    def counts(self, tag: str | None) -> dict[str, Any]:
        """How many requests arrived, in all and per path (`GET /_mock/counts`)."""
        paths = Counter(e.path for e in self._items if tag is None or e.tag == tag)
        return {"total": sum(paths.values()), "paths": dict(sorted(paths.items()))}


def _render(entry: _Entry) -> dict[str, Any]:
    """One record as JSON: what arrived, verbatim, plus a few parsed fields for convenience.

    `body` is the text when the kept bytes are UTF-8 (else null); `body_base64` always holds
    them exactly (a compressed body, say); `body_truncated` says whether bytes were dropped.
    """
    try:
        text: str | None = entry.body.decode()
    except UnicodeDecodeError:
        text = None
    return {
        "seq": entry.seq,
        "tag": entry.tag,
        "method": entry.method,
        "target": entry.target,
        "path": entry.path,
        "query": entry.query,
        "version": entry.version,
        "headers": [[name, value] for name, value in entry.headers],
        "trailers": [[name, value] for name, value in entry.trailers],
        "credentials": _credentials(entry.headers),
        "body": text,
        "body_base64": base64.b64encode(entry.body).decode("ascii"),
        "body_bytes": entry.body_bytes,
        "body_truncated": len(entry.body) < entry.body_bytes,
        **entry.summary,
    }


def _credentials(headers: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Every credential-carrying header received, all occurrences, only names present."""
    found: dict[str, list[str]] = {}
    for name, value in headers:
        if is_credential_header(name):
            found.setdefault(name, []).append(value)
    return found
