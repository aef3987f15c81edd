"""A worker built for a shared store (`serve/wiring.py`) is a sidecar instance: it shows up
in the store's registry with `--instance-ttl`, keeps renewing there, and a graceful close
takes it out at once."""

from __future__ import annotations

import argparse
import asyncio

import pytest
import redis.asyncio as aioredis

from extproc.errors import ConfigError
from extproc.quota.backends.redis_liveness import REGISTRY
from extproc.serve.settings import ServeSettings, add_serve_arguments, serve_settings
from extproc.serve.wiring import build_runtime
from tests.integration.mock_server import VOCAB
from tests.redis_server import RedisServer
from tests.waiting import wait_until_async


def _settings(*argv: str) -> ServeSettings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return serve_settings(parser.parse_args(list(argv)))


def test_instance_ttl_flag_environment_and_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENGATE_INSTANCE_TTL", raising=False)
    assert _settings().instance_ttl_s == 10.0
    assert _settings("--instance-ttl", "3").instance_ttl_s == 3.0
    monkeypatch.setenv("TOKENGATE_INSTANCE_TTL", "4.5")
    assert _settings().instance_ttl_s == 4.5
    with pytest.raises(ConfigError, match="--instance-ttl"):
        _settings("--instance-ttl", "0")


def test_a_worker_registers_renews_and_retires(server: RedisServer) -> None:
    settings = _settings("--quota-store", server.url, "--instance-ttl", "0.6",
                         "--vocab-dir", str(VOCAB), "--store-timeout", "0.5")  # fmt: skip

    async def scenario() -> None:
        admin = aioredis.from_url(server.url)
        runtime = build_runtime(settings)
        seconds, micros = await admin.time()
        started = seconds + micros / 1e6
        renewed: list[float] = []

        async def renewed_twice() -> bool:
            entries = await admin.zrange(REGISTRY, 0, -1, withscores=True)
            renewed[:] = [float(entry[1]) for entry in entries]
            # one instance; its deadline moved past two beats (0.2 s each) plus its TTL
            return len(renewed) == 1 and renewed[0] >= started + 0.4 + 0.6

        await wait_until_async(renewed_twice, detail=lambda: renewed)
        await runtime.store.aclose()
        assert await admin.zcard(REGISTRY) == 0
        await admin.aclose()

    asyncio.run(scenario())
