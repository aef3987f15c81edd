"""Which translation serves a (client, backend) pair of provider families."""

from __future__ import annotations

from extproc.errors import InvariantError
from extproc.providers.translate import Translation
from extproc.providers.translate.chat_over_messages import TRANSLATION as CHAT_OVER_MESSAGES
from extproc.providers.translate.messages_over_chat import TRANSLATION as MESSAGES_OVER_CHAT

_BY_PAIR: dict[tuple[str, str], Translation] = {
    ("openai", "anthropic"): CHAT_OVER_MESSAGES,
    ("anthropic", "openai"): MESSAGES_OVER_CHAT,
}


def translation_for(client: str, backend: str) -> Translation | None:
    """None when both speak the same API: the attempt only changes the model."""
    if client == backend:
        return None
    found = _BY_PAIR.get((client, backend))
    if found is None:
        raise InvariantError(f"no translation from {client} to {backend}")
    return found
