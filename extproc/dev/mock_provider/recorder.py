"""What the mock saw: a bounded log of requests and a few counters.

Tests behind the real Envoy cannot look inside the sidecar, so they ask the upstream: which
credential reached it (the client's must never; the injected provider key must), which model,
whether the body was rewritten (`include_usage`). Records are selected by the `x-request-tag`
header the test sets, so parallel tests sharing one mock do not see each other's traffic.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from extproc.dev.mock_provider.parser import Request

CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")
CAPACITY = 10_000


@dataclass(slots=True)
class Stats:
    """Counters exposed at `/_mock/stats`. `requests` counts every request outside `/_mock/`.

    A stream is counted started once its response headers are written; it then ends as exactly
    one of completed (terminal chunk written) or aborted (client went away first).
    """

    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_aborted: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Recorder:
    """Ring buffer of the last `capacity` provider requests."""

    def __init__(self, *, capacity: int = CAPACITY) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._seq = 0

    def record(self, request: Request, payload: object) -> None:
        """Remember `request`; `payload` is its parsed JSON body (None when it did not parse)."""
        fields = payload if isinstance(payload, dict) else {}
        model = fields.get("model")
        options = fields.get("stream_options")
        max_tokens = fields.get("max_completion_tokens", fields.get("max_tokens"))
        self._seq += 1
        self._items.append(
            {
                "seq": self._seq,
                "tag": request.header("x-request-tag"),
                "method": request.method,
                "path": request.path,
                "model": model if isinstance(model, str) else None,
                "stream": fields.get("stream") is True,
                "include_usage": isinstance(options, dict) and options.get("include_usage") is True,
                "max_tokens": max_tokens if isinstance(max_tokens, int) else None,
                "body_bytes": len(request.body),
                "credentials": _credentials(request),
            }
        )

    def query(self, tag: str | None) -> list[dict[str, Any]]:
        """Records whose tag equals `tag`, oldest first; every record when `tag` is None."""
        if tag is None:
            return list(self._items)
        return [item for item in self._items if item["tag"] == tag]


def _credentials(request: Request) -> dict[str, list[str]]:
    """Every credential header received, all occurrences, only the names that were present."""
    found: dict[str, list[str]] = {}
    for name, value in request.headers:
        if name in CREDENTIAL_HEADERS:
            found.setdefault(name, []).append(value)
    return found
