"""Per-API-key rate limits, reported in each provider's own response headers.

The gateway reads an upstream's headroom from these headers and must survive its 429s, so the
mock enforces limits the way the real APIs do and says so the way they do. A process-wide
`KeyLimits` (`tokengate mock-provider --key-rpm N --key-tpm N`; 0 = unlimited, the default, and
then nothing here runs and no header is added) applies to every API key separately. The key is
the credential the provider takes (`Authorization: Bearer <key>` on OpenAI routes,
`x-api-key` on Anthropic routes; a request without one shares the bucket of the empty key).
Only its SHA-256 digest is kept, never the key itself, and nothing here logs.

Accounting: one token bucket per key and limit, refilled continuously at `limit / 60 s` up to
`limit`. Anthropic describes its limits as such a bucket (continuously replenished); OpenAI
describes its reset headers as the time until the limit is back to its initial state, which a
bucket gives directly (real answers show sub-second values such as `12ms`). A request is
admitted only if every enabled bucket holds its cost, and then pays all of them: 1 request,
and tokens = the prompt (the mock's exact count) + the completion cap (`max_tokens` /
`max_completion_tokens` / `max_output_tokens` times the choices generated; without a cap, the
answer's planned length); embeddings pay their input tokens. That is an admission estimate as
the providers make one; the mock never settles it against the answer afterwards. A request
bigger than the whole token limit is refused whatever the bucket holds. Time comes from an
injectable clock (wall-clock seconds, since Anthropic's reset is a timestamp), so tests move
it instead of sleeping.

Header names and formats, checked with the documentation search (the providers' own pages are
not in it verbatim): OpenAI's from a mirror of platform.openai.com guides/rate-limits (the
header table, samples `1s` and `6m0s`) and community.openai.com threads quoting real answers;
Anthropic's from write-ups and client code quoting docs.anthropic.com/en/api/rate-limits
(all twelve `anthropic-ratelimit-*` names, resets as RFC 3339 timestamps, `retry-after` in
seconds on 429):

    OpenAI     x-ratelimit-limit-requests / -limit-tokens       the limit
               x-ratelimit-remaining-requests / -remaining-tokens what is left
               x-ratelimit-reset-requests / -reset-tokens       time until the bucket is full
                                                                again, as a Go duration
                                                                (20ms, 1s, 1.5s, 6m0s)
    Anthropic  anthropic-ratelimit-requests-limit / -remaining / -reset
               anthropic-ratelimit-tokens-limit / -remaining / -reset
                                                                reset = when the bucket is full
                                                                again, RFC 3339 (…T12:01:00Z)
    both, 429  retry-after: whole seconds (at least 1) until the refused request would fit

Anthropic also sends `anthropic-ratelimit-input-tokens-*` / `-output-tokens-*` for its separate
input and output limits; the mock has one token limit, so it sends only the combined `tokens`
triplet rather than invent two. No per-request override of the limits exists: a bucket's
capacity must not change between the requests it meters.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from extproc.dev.mock_provider.common import Headers
from extproc.errors import ConfigError

Clock = Callable[[], float]
"""Seconds since the epoch, like `time.time` (the default)."""

PERIOD = 60.0  # both limits are per minute
PRUNE_AT = 10_000  # keys kept before full (idle) buckets are forgotten
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """Requests (`rpm`) and tokens (`tpm`) per minute allowed to each API key; 0 = unlimited."""

    rpm: int = 0
    tpm: int = 0

    def __post_init__(self) -> None:
        if self.rpm < 0 or self.tpm < 0:
            raise ConfigError(f"rate limits must be >= 0 (0 = unlimited), got {self}")

    @property
    def enabled(self) -> bool:
        return self.rpm > 0 or self.tpm > 0


NO_LIMITS = KeyLimits()


@dataclass(frozen=True, slots=True)
class Meter:
    """One limit as the headers report it: whole units left, seconds until the bucket is full."""

    limit: int
    remaining: int
    full_in: float


@dataclass(frozen=True, slots=True)
class Decision:
    """A key's limits at `now`, after charging the request when it was admitted.

    A meter is None when its limit is off. A refused request (`message` set) was charged
    nothing and would fit in `retry_after` seconds.
    """

    now: float
    requests: Meter | None
    tokens: Meter | None
    message: str = ""
    retry_after: float = 0.0

    @property
    def admitted(self) -> bool:
        return not self.message


class _Levels:
    """What one key's buckets held at `stamp`."""

    __slots__ = ("requests", "stamp", "tokens")

    def __init__(self, *, requests: float, tokens: float, stamp: float) -> None:
        self.requests = requests
        self.tokens = tokens
        self.stamp = stamp


class RateLimiter:
    """The buckets of every key seen. Thread-safe: big requests are answered off the loop."""

    def __init__(self, *, limits: KeyLimits, clock: Clock = time.time) -> None:
        self._limits = limits
        self._clock = clock
        self._keys: dict[bytes, _Levels] = {}
        self._lock = threading.Lock()
        self._prune_at = PRUNE_AT

    def admit(self, key: str | None, *, tokens: int) -> Decision:
        """Charge 1 request and `tokens` to `key` if every limit allows it, else refuse."""
        rpm, tpm = self._limits.rpm, self._limits.tpm
        with self._lock:
            now = self._clock()
            levels = self._levels(_digest(key), now)
            refusal = _refusal(levels, rpm=rpm, tpm=tpm, tokens=tokens)
            if refusal is not None:
                message, wait = refusal
                return self._decision(levels, now, message=message, retry_after=wait)
            if rpm:
                levels.requests -= 1
            if tpm:
                levels.tokens -= tokens
            return self._decision(levels, now)

    def peek(self, key: str | None) -> Decision:
        """The key's state without charging it (answers that cost nothing still report it)."""
        with self._lock:
            now = self._clock()
            found = self._keys.get(_digest(key))
            levels = self._full(now) if found is None else _refilled(found, now, self._limits)
            return self._decision(levels, now)

    def _levels(self, digest: bytes, now: float) -> _Levels:
        found = self._keys.get(digest)
        if found is None and len(self._keys) >= self._prune_at:
            self._prune(now)
        levels = self._full(now) if found is None else _refilled(found, now, self._limits)
        self._keys[digest] = levels
        return levels

    def _full(self, now: float) -> _Levels:
        return _Levels(requests=self._limits.rpm, tokens=self._limits.tpm, stamp=now)

    def _prune(self, now: float) -> None:
        """Forget keys whose buckets are full again (they equal a new key's), amortised O(1)."""
        limits = self._limits
        for digest, levels in list(self._keys.items()):
            refilled = _refilled(levels, now, limits)
            if refilled.requests >= limits.rpm and refilled.tokens >= limits.tpm:
                del self._keys[digest]
        self._prune_at = max(PRUNE_AT, 2 * len(self._keys))

    def _decision(
        self, levels: _Levels, now: float, *, message: str = "", retry_after: float = 0.0
    ) -> Decision:
        rpm, tpm = self._limits.rpm, self._limits.tpm
        return Decision(
            now=now,
            requests=_meter(levels.requests, rpm) if rpm else None,
            tokens=_meter(levels.tokens, tpm) if tpm else None,
            message=message,
            retry_after=retry_after,
        )


def _refilled(levels: _Levels, now: float, limits: KeyLimits) -> _Levels:
    elapsed = max(0.0, now - levels.stamp)  # a wall clock stepping back refills nothing
    return _Levels(
        requests=min(limits.rpm, levels.requests + elapsed * limits.rpm / PERIOD),
        tokens=min(limits.tpm, levels.tokens + elapsed * limits.tpm / PERIOD),
        stamp=max(now, levels.stamp),
    )


def _refusal(levels: _Levels, *, rpm: int, tpm: int, tokens: int) -> tuple[str, float] | None:
    """(message, seconds until the request fits), or None when every limit allows it."""
    if tpm and tokens > tpm:
        message = f"Request too large: {tokens} tokens, limit {tpm} tokens per min (TPM)"
        return message, (tpm - levels.tokens) * PERIOD / tpm
    waits = []
    if rpm and levels.requests < 1 - _EPSILON:
        waits.append(("requests per min (RPM)", rpm, 1, (1 - levels.requests) * PERIOD / rpm))
    if tpm and levels.tokens < tokens - _EPSILON:
        wait = (tokens - levels.tokens) * PERIOD / tpm
        waits.append(("tokens per min (TPM)", tpm, tokens, wait))
    if not waits:
        return None
    what, limit, asked, wait = max(waits, key=lambda item: item[3])
    message = (
        f"Rate limit reached for this API key on {what}: Limit {limit}, Requested {asked}. "
        f"Please try again in {go_duration(wait)}."
    )
    return message, wait


def _meter(level: float, limit: int) -> Meter:
    remaining = max(0, math.floor(level + _EPSILON))
    full_in = max(0.0, (limit - level) * PERIOD / limit)
    return Meter(limit=limit, remaining=remaining, full_in=0.0 if full_in < _EPSILON else full_in)


def _digest(key: str | None) -> bytes:
    return hashlib.sha256((key or "").encode("utf-8", "surrogatepass")).digest()


# --- headers ---------------------------------------------------------------------------------


def headers_for(provider: str, decision: Decision) -> Headers:
    """The rate-limit headers of `provider` ("openai" | "anthropic"), plus `retry-after` when
    the request was refused."""
    render = _anthropic if provider == "anthropic" else _openai
    headers = render(decision)
    if decision.admitted:
        return headers
    return (*headers, ("retry-after", str(max(1, math.ceil(decision.retry_after - _EPSILON)))))


def _openai(d: Decision) -> Headers:
    pairs = [("requests", d.requests), ("tokens", d.tokens)]
    present = [(name, meter) for name, meter in pairs if meter is not None]
    return (
        *((f"x-ratelimit-limit-{name}", str(m.limit)) for name, m in present),
        *((f"x-ratelimit-remaining-{name}", str(m.remaining)) for name, m in present),
        *((f"x-ratelimit-reset-{name}", go_duration(m.full_in)) for name, m in present),
    )


def _anthropic(d: Decision) -> Headers:
    headers: list[tuple[str, str]] = []
    for name, meter in (("requests", d.requests), ("tokens", d.tokens)):
        if meter is None:
            continue
        prefix = f"anthropic-ratelimit-{name}"
        headers.append((f"{prefix}-limit", str(meter.limit)))
        headers.append((f"{prefix}-remaining", str(meter.remaining)))
        headers.append((f"{prefix}-reset", rfc3339(d.now + meter.full_in)))
    return tuple(headers)


def go_duration(seconds: float) -> str:
    """OpenAI's reset format (Go's `time.Duration`) at millisecond precision, rounded up:
    `0s`, `20ms`, `1.5s`, `20s`, `6m0s`, `1h0m0s`."""
    ms = max(0, math.ceil(seconds * 1000 - _EPSILON))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    text = f"{whole}.{fraction:03d}".rstrip("0") if fraction else str(whole)
    if hours:
        return f"{hours}h{minutes}m{text}s"
    return f"{minutes}m{text}s" if minutes else f"{text}s"


def rfc3339(epoch: float) -> str:
    """Anthropic's reset format, in whole seconds rounded up (never before the moment meant)."""
    instant = datetime.fromtimestamp(math.ceil(epoch - _EPSILON), tz=UTC)
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")
