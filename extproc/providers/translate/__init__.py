"""Translation between provider wire schemas, for model routes that serve a client's request
on another provider's API (fallback from OpenAI to Anthropic and back).

One module per pair, named for what the client speaks and what serves it:
`chat_over_messages` (an OpenAI Chat Completions client served by Anthropic Messages) and
`messages_over_chat` (an Anthropic Messages client served by OpenAI Chat Completions). Each
module exposes one `Translation`; everything here is pure (no I/O), so the upstream ext_proc
phase that calls it stays a few dictionary walks per message.

What a backend's API cannot express is refused with `Untranslatable` (a 400 in the client's
own format, naming the field) before anything is sent: a request is never silently changed
in meaning. Hints that change nothing the model generates (Anthropic `cache_control`) may be
dropped; each module's docstring lists what it drops and what it refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from extproc.errors import BadRequest


class Untranslatable(BadRequest):
    """A request field (or value) the serving backend's API cannot express. `param` names it
    in the client's own schema, e.g. `messages[2].content[0].input_audio`."""

    outcome = "untranslatable"
    code = "untranslatable_for_backend"


class StreamTranslator(Protocol):
    """One backend event stream turned into the client's, as bytes arrive."""

    def feed(self, chunk: bytes) -> bytes:
        """Bytes of the backend's SSE stream, split anywhere; returns the client-format SSE
        bytes of every event the chunk completes (b"" when none)."""
        ...

    def close(self) -> bytes:
        """The backend stream ended: whatever the client's format still owes (e.g. OpenAI's
        `data: [DONE]`), or b"" when the stream was already complete."""
        ...


class Translation(Protocol):
    """One (client schema, backend schema) pair."""

    client: str  # the provider family whose format the client speaks: "openai" | "anthropic"
    backend: str  # the provider family that serves
    backend_path: str  # where the backend takes the request, e.g. "/v1/messages"

    def request(
        self, body: Mapping[str, Any], *, model: str, default_max_tokens: int
    ) -> dict[str, Any]:
        """The client's request body as the backend's, for `model` (the backend's model
        name). `default_max_tokens` is written where the backend requires a cap the client
        did not give. Raises `Untranslatable` for what the backend cannot express."""
        ...

    def answer(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The backend's plain (non-streamed) answer in the client's format."""
        ...

    def stream(self, *, include_usage: bool) -> StreamTranslator:
        """A translator for one streamed answer. `include_usage`: the client-format stream
        carries the usage event (OpenAI `stream_options.include_usage`; Anthropic always)."""
        ...

    def error(self, status: int, body: bytes) -> tuple[int, bytes]:
        """A backend error answer (status, body as received, possibly not JSON) as the
        client's: the status to send and a body in the client's error format."""
        ...
