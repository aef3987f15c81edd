"""Provider credentials: read from the environment or a mounted Secret file, never shown.

`Secret` keeps the value out of reprs, logs and tracebacks; only `reveal()` hands it out, and
the one caller of that builds the upstream header.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_plus

from extproc.errors import ConfigError

# Every header a client might use to carry a credential toward a provider. They are removed
# from every request, whatever their case or count (Envoy lower-cases names, and removing a
# name removes every copy); `credential_headers` also finds the ones named by pattern.
CLIENT_CREDENTIAL_HEADERS = (
    "authorization", "proxy-authorization", "x-forwarded-authorization", "cookie",
    "x-api-key", "api-key", "x-goog-api-key",
)  # fmt: skip
# Any other name ending so, e.g. `openai-api-key`, `anthropic-api-key`, `x-auth-token`. Names
# are compared with `_` read as `-`: WSGI-style servers read `x_api_key` as `x-api-key`.
_CREDENTIAL_SUFFIXES = ("api-key", "apikey", "-token", "-secret")
# Query parameters that carry keys in some APIs (`?key=` for Google's); removed before the
# upstream, and never accepted as identity.
CREDENTIAL_QUERY_PARAMETERS = frozenset(
    {"key", "api_key", "api-key", "apikey", "access_token", "token"}
)


def credential_headers(headers: Iterable[str]) -> list[str]:
    """The names among `headers` that may carry a credential, besides the fixed list."""
    found = list(CLIENT_CREDENTIAL_HEADERS)
    for name in headers:
        dashed = name.lower().replace("_", "-")
        carries = dashed in CLIENT_CREDENTIAL_HEADERS or dashed.endswith(_CREDENTIAL_SUFFIXES)
        if carries and name not in found:
            found.append(name)
    return found


def without_credential_query(path: str) -> str | None:
    """`path` with every credential-looking query parameter removed; None when it has none
    (the usual case: nothing to rewrite)."""
    base, mark, query = path.partition("?")
    if not mark:
        return None
    kept = [
        part
        for part in query.split("&")
        if unquote_plus(part.partition("=")[0]).lower() not in CREDENTIAL_QUERY_PARAMETERS
    ]
    if len(kept) == query.count("&") + 1:
        return None
    return f"{base}?{'&'.join(kept)}" if kept else base


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class CredentialSource:
    """Where a provider's key comes from: a file (preferred, rotatable) or an env var."""

    env_var: str | None = None
    file: Path | None = None

    def load(self) -> Secret | None:
        if self.file is not None:
            try:
                value = self.file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read credential file {self.file}: {exc.strerror}"
                ) from exc
            if not value:
                raise ConfigError(f"credential file {self.file} is empty")
            return Secret(value)
        if self.env_var is not None:
            value = os.environ.get(self.env_var, "").strip()
            return Secret(value) if value else None
        return None
