"""The mock provider on a real socket for the integration tests: a server on port 0 in a
background thread with its own event loop, so the (sync) SDKs and raw sockets talk to it
exactly as they would to the real API; plus the clients and the expected prompt counts."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import openai

from extproc.dev.mock_provider import MockProvider
from tests.token_counts import ntok

T = TypeVar("T")
DEFAULT_VOCAB = Path(__file__).resolve().parents[2] / ".cache" / "tiktoken"
VOCAB = Path(os.environ.get("TOKENGATE_VOCAB_DIR", str(DEFAULT_VOCAB)))
KEY = "sk-mock-provider-key"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say something."},
]


class ServerThread:
    """A MockProvider on its own loop in a daemon thread."""

    def __init__(self, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.provider = MockProvider(**kwargs)
        self.port = self.call(self.provider.start())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def tasks(self) -> int:
        async def count() -> int:
            return len(asyncio.all_tasks()) - 1

        return self.call(count())

    def close(self) -> None:
        self.call(self.provider.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def oai(srv: ServerThread, **kwargs: Any) -> openai.OpenAI:
    base = f"http://127.0.0.1:{srv.port}/v1"
    return openai.OpenAI(base_url=base, api_key=kwargs.pop("api_key", KEY), max_retries=0, **kwargs)


def ant(srv: ServerThread, **kwargs: Any) -> anthropic.Anthropic:
    base = f"http://127.0.0.1:{srv.port}"
    key = kwargs.pop("api_key", KEY)
    return anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, **kwargs)


def get_json(srv: ServerThread, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    assert response.status == 200
    data = json.loads(response.read())
    conn.close()
    return data


def openai_prompt_tokens(encoding: str) -> int:
    """OpenAI's billing: 3 per message + its role + its content, 3 to prime the reply."""
    return (
        sum(ntok(m["role"], encoding) + ntok(m["content"], encoding) for m in MESSAGES)
        + 3 * len(MESSAGES)
        + 3
    )
