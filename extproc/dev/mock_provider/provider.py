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
from pathlib import Path

from extproc.dev.mock_provider.http import HttpServer
from extproc.dev.mock_provider.recorder import Recorder, Stats
from extproc.dev.mock_provider.router import Router
from extproc.providers.tokens import count, encoding_name_for


class MockProvider:
    """An HTTP/1.1 server speaking OpenAI Chat Completions, Responses, legacy Completions
    and Embeddings, and Anthropic Messages.

    `require_key`, when set, makes every provider request carry exactly one credential header
    with that key (Bearer on OpenAI routes, x-api-key on Anthropic routes), which is how e2e
    tests prove the gateway swapped the client's credential for the provider key.
    `stats` counts requests and streams (also served at `GET /_mock/stats`).
    """

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, require_key: str | None = None
    ) -> None:
        self._host = host
        self._port = port
        self.stats = Stats()
        router = Router(stats=self.stats, recorder=Recorder(), require_key=require_key)
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
) -> None:
    """Serve until SIGTERM or SIGINT. Prints `mock-provider listening on http://HOST:PORT`."""
    asyncio.run(_serve(host=host, port=port, port_file=port_file, require_key=require_key))


async def _serve(*, host: str, port: int, port_file: Path | None, require_key: str | None) -> None:
    provider = MockProvider(host=host, port=port, require_key=require_key)
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
