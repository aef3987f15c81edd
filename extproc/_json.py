"""Decoding client JSON with defined failures (malformed, not an object, nested too deep)."""

from __future__ import annotations

import json
from typing import Any

from extproc.errors import BadRequest


def decode_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or BadRequest saying what is wrong with it.

    Depth is bounded by CPython's decoder, which raises RecursionError at ~1,000 levels after
    a linear scan of at most that many bytes, so a 100,000-deep document costs microseconds.
    """
    try:
        value = json.loads(body)
    except RecursionError as exc:
        raise BadRequest("request body is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, integers over 4,300 digits
        raise BadRequest(f"request body is not valid JSON: {_short(exc)}") from exc
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    return value


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."
