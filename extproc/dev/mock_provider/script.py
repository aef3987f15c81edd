"""Per-request scripting through `x-mock-*` headers.

Tests and benchmarks shape the mock's behaviour per request instead of per process, so one
mock serves many scenarios at once (parallel tests, mixed benchmark load):

    x-mock-status: 429            reply with this status (400-599) and a provider-format error
    x-mock-delay-ms: 250          wait before the response headers
    x-mock-completion-tokens: 40  answer length in tokens (still capped by max_tokens)
    x-mock-chunk-delay-ms: 20     wait between stream chunks
    x-mock-tokens-per-chunk: 3    tokens per streamed content delta (default 3)
    x-mock-omit-usage: 1          no usage in the answer (plain: no `usage`; stream: none ever)
    x-mock-reasoning-tokens: 500  hidden reasoning tokens per generated choice, billed as
                                  output and bounded by the completion cap like the visible
                                  words (reasoning first: a small cap leaves no answer)
    x-mock-cached-tokens: 100     report this many prompt tokens (at most all) as read from
                                  the prompt cache (OpenAI `cached_tokens`, Anthropic
                                  `cache_read_input_tokens`)
    x-mock-content-encoding: gzip compress the answer: gzip | deflate (even when the request
                                  asked for identity), auto (as accept-encoding allows),
                                  identity (see `encoding`)
    x-mock-fail: reset            reset the connection (TCP RST) after reading the request,
                                  sending nothing: a reset before response headers
    x-mock-fail: reset-after-chunks:N
                                  send the head and N stream events (0-1000000), then close
                                  the connection without ending the body: a failure after the
                                  first byte (no terminating chunk; a plain answer sends its
                                  head only). Either failure comes after x-mock-delay-ms and
                                  replaces or cuts whatever answer the request would get
    x-mock-only-model: gpt-4o     apply the other x-mock-* headers only when the request body's
                                  `model` is exactly this; otherwise serve the request as if it
                                  had none (a failover test sends the same headers to backend A
                                  and B and scripts only A's model)

A header that is present but not a valid value is a 400, so a typo in a test fails loudly;
that holds under x-mock-only-model too (every header is checked whatever the model).
The model is the body's top-level `model` field, where every endpoint (chat completions,
messages, responses, completions, embeddings, count_tokens) names it; a request without one
(no body, not JSON) never matches.
"""

from __future__ import annotations

from dataclasses import dataclass

from extproc.dev.mock_provider.common import ApiError
from extproc.dev.mock_provider.encoding import MODES
from extproc.dev.mock_provider.http import RESET, Failure
from extproc.dev.mock_provider.parser import Request

MAX_COMPLETION_TOKENS = 1_000_000
MAX_DELAY_MS = 600_000
DEFAULT_TOKENS_PER_CHUNK = 3
MAX_CHUNKS = 1_000_000
_CUT_PREFIX = "reset-after-chunks:"


@dataclass(frozen=True, slots=True)
class Script:
    status: int | None = None
    delay: float = 0.0
    completion_tokens: int | None = None
    chunk_delay: float = 0.0
    tokens_per_chunk: int = DEFAULT_TOKENS_PER_CHUNK
    omit_usage: bool = False
    content_encoding: str | None = None
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    failure: Failure | None = None


DEFAULT = Script()


def script_from(request: Request, *, model: str | None = None) -> Script:
    """The request's script; `DEFAULT` (no allocation) when it carries no `x-mock-` header,
    and also when `x-mock-only-model` names another model than `model` (the body's)."""
    if not any(name.startswith("x-mock-") for name, _ in request.headers):
        return DEFAULT
    script = _parse(request)
    only = _text(request, "x-mock-only-model")
    if only is not None and only != model:
        return DEFAULT
    return script


def _parse(request: Request) -> Script:
    per_chunk = _int(request, "x-mock-tokens-per-chunk", 1, MAX_COMPLETION_TOKENS)
    return Script(
        status=_int(request, "x-mock-status", 400, 599),
        delay=_ms(request, "x-mock-delay-ms"),
        completion_tokens=_int(request, "x-mock-completion-tokens", 0, MAX_COMPLETION_TOKENS),
        chunk_delay=_ms(request, "x-mock-chunk-delay-ms"),
        tokens_per_chunk=DEFAULT_TOKENS_PER_CHUNK if per_chunk is None else per_chunk,
        omit_usage=_flag(request, "x-mock-omit-usage"),
        content_encoding=_choice(request, "x-mock-content-encoding", MODES),
        reasoning_tokens=_int(request, "x-mock-reasoning-tokens", 0, MAX_COMPLETION_TOKENS) or 0,
        cached_tokens=_int(request, "x-mock-cached-tokens", 0, MAX_COMPLETION_TOKENS) or 0,
        failure=_failure(request),
    )


def _failure(request: Request) -> Failure | None:
    """`x-mock-fail`: `reset` or `reset-after-chunks:N`."""
    name = "x-mock-fail"
    raw = request.header(name)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value == "reset":
        return RESET
    count = value.removeprefix(_CUT_PREFIX)
    ok = value.startswith(_CUT_PREFIX) and count.isascii() and count.isdigit()
    if not ok or len(count) > 9 or int(count) > MAX_CHUNKS:
        message = f"{name} must be reset or {_CUT_PREFIX}N (N in [0, {MAX_CHUNKS}]), got {raw!r}"
        raise ApiError(400, message)
    return Failure(after_events=int(count))


def _text(request: Request, name: str) -> str | None:
    raw = request.header(name)
    if raw is None:
        return None
    value = raw.strip()
    if not value:
        raise ApiError(400, f"{name} must not be empty")
    return value


def _int(request: Request, name: str, low: int, high: int) -> int | None:
    raw = request.header(name)
    if raw is None:
        return None
    value = raw.strip()
    ok = value.isascii() and value.isdigit() and len(value) <= 9
    if not ok or not low <= int(value) <= high:
        raise ApiError(400, f"{name} must be an integer in [{low}, {high}], got {raw!r}")
    return int(value)


def _ms(request: Request, name: str) -> float:
    value = _int(request, name, 0, MAX_DELAY_MS)
    return 0.0 if value is None else value / 1000


def _flag(request: Request, name: str) -> bool:
    raw = request.header(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value not in ("0", "1", "true", "false"):
        raise ApiError(400, f"{name} must be 1 or 0, got {raw!r}")
    return value in ("1", "true")


def _choice(request: Request, name: str, allowed: tuple[str, ...]) -> str | None:
    raw = request.header(name)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value not in allowed:
        raise ApiError(400, f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return value
