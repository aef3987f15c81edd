"""`MockProvider`: the OpenAI/Anthropic-compatible upstream for demos, e2e tests and benchmarks.

The class is the embeddable form (tests start it on port 0 inside their own event loop);
`run` is the process form behind `tokengate mock-provider`, which prints one ready line and
exits cleanly on SIGTERM/SIGINT so supervisors (make run, the e2e harness) can manage it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path

from extproc.dev.mock_provider.http import HttpServer
from extproc.dev.mock_provider.ratelimit import NO_LIMITS, Clock, KeyLimits, RateLimiter
from extproc.dev.mock_provider.recorder import Recorder, Stats
from extproc.dev.mock_provider.router import Router
from extproc.providers.tokens import count, encoding_name_for


class MockProvider:
    """An HTTP/1.1 server speaking OpenAI Chat Completions, Responses, legacy Completions
    and Embeddings, and Anthropic Messages.

    `require_key`, when set, makes every provider request carry exactly one credential header
    with that key (Bearer on OpenAI routes, x-api-key on Anthropic routes), which is how e2e
    tests prove the gateway swapped the client's credential for the provider key.
    `limits` are per-API-key requests and tokens per minute, answered with each provider's
    rate-limit headers and 429s (see `ratelimit`; off by default); `clock` is their time
    source, which tests replace to move time on without sleeping.
    `stats` counts requests and streams (also served at `GET /_mock/stats`).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        require_key: str | None = None,
        limits: KeyLimits = NO_LIMITS,
        clock: Clock = time.time,
    ) -> None:
        self._host = host
        self._port = port
        self.stats = Stats()
        limiter = RateLimiter(limits=limits, clock=clock) if limits.enabled else None
        router = Router(
            stats=self.stats, recorder=Recorder(), require_key=require_key, limiter=limiter
        )
        self._server = HttpServer(app=router, stats=self.stats)

    async def start(self) -> int:
        """Load the tokenizers (so the first request is not ~1 s slow), listen, return the port."""
        await asyncio.to_thread(_warm_up)
        self._port = await self._server.start(self._host, self._port)
        return self._port

    async def close(self) -> None:
        """Stop listening and drop every connection; in-flight streams count as aborted."""
        await self._server.close()


def run(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    port_file: Path | None = None,
    require_key: str | None = None,
    limits: KeyLimits = NO_LIMITS,
) -> None:
    """Serve until SIGTERM or SIGINT. Prints `mock-provider listening on http://HOST:PORT`."""
    provider = MockProvider(host=host, port=port, require_key=require_key, limits=limits)
    asyncio.run(_serve(provider, host=host, port_file=port_file))


async def _serve(provider: MockProvider, *, host: str, port_file: Path | None) -> None:
    bound = await provider.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        if port_file is not None:
            _write_atomically(port_file, f"{bound}\n")
        url_host = f"[{host}]" if ":" in host else host
        print(f"mock-provider listening on http://{url_host}:{bound}", flush=True)
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await provider.close()


def _write_atomically(path: Path, text: str) -> None:
    """A reader polling for the port file never sees it half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _warm_up() -> None:
    for model in ("gpt-4", "gpt-4o"):
        count("warm up", encoding_name_for(model))
