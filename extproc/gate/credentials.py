"""Provider credentials: read from the environment or a mounted Secret file, never shown.

`Secret` keeps the value out of reprs, logs and tracebacks; only `reveal()` hands it out, and
the one caller of that builds the upstream header.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from extproc.errors import ConfigError

# Every header a client might use to carry a provider credential. All of them are removed
# from every request, whatever their case or count.
CLIENT_CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")


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
