"""The text forms of values `tokengate ctl` reads: durations, counts, seconds, extra quota
amounts.

Each `parse_*` is an argparse `type` and raises `ArgumentTypeError`, the protocol argparse
has for them: its message is printed as it is, as a usage error (exit 2). A ValueError's
message would be replaced by argparse's generic "invalid parse_duration value".
"""

from __future__ import annotations

import math
import re
from argparse import ArgumentTypeError
from dataclasses import dataclass
from decimal import Decimal

MICRO = 1_000_000
AMOUNT_MAX = 2**53 - 1  # the validator's bound on any amount

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_INTEGER = re.compile(r"[0-9]+")
_DOLLARS = re.compile(r"\$([0-9]+(?:\.[0-9]{1,6})?)")


def parse_duration(text: str) -> float:
    """30s, 15m, 2h, 1d, 1h30m, 0.5h -> seconds; refused unless a positive duration."""
    if not _DURATION.fullmatch(text.strip()):
        raise ArgumentTypeError(f"invalid duration {text!r} (use e.g. 30s, 15m, 2h, 1d or 1h30m)")
    seconds = sum(
        float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(text)
    )
    if seconds <= 0:
        raise ArgumentTypeError(f"duration {text!r} must be longer than zero")
    return seconds


def parse_count(text: str) -> int:
    if not _INTEGER.fullmatch(text.strip()) or not 0 < int(text) <= 2**31 - 1:
        raise ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < math.inf:
        raise ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def parse_nonblank(text: str) -> str:
    if not text.strip():
        raise ArgumentTypeError("must not be empty")
    return text.strip()


@dataclass(frozen=True, slots=True, kw_only=True)
class Extra:
    """`--extra LIMIT=AMOUNT`: AMOUNT in the limit's unit, or '$D' dollars for usd limits."""

    limit: str
    amount: int  # usd: micro-dollars
    unit: str  # "usd" when given in dollars, else "" (the limit's own unit)


def parse_extra(text: str) -> Extra:
    limit, sep, value = text.partition("=")
    limit, value = limit.strip(), value.strip()
    if not sep or not limit or not value:
        raise ArgumentTypeError(f"expected LIMIT=AMOUNT (e.g. tpm=50000 or spend=$5), got {text!r}")
    dollars = _DOLLARS.fullmatch(value)
    if dollars:
        micro, unit = int(Decimal(dollars.group(1)) * MICRO), "usd"
    elif _INTEGER.fullmatch(value):
        micro, unit = int(value), ""
    else:
        raise ArgumentTypeError(
            f"amount {value!r} must be a positive integer, or '$D.CC' for dollars"
        )
    if not 0 < micro <= AMOUNT_MAX:
        raise ArgumentTypeError(f"amount {value!r} must be positive and at most {AMOUNT_MAX} units")
    return Extra(limit=limit, amount=micro, unit=unit)
