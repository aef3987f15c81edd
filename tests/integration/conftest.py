"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.providers import tokens
from tests.integration.mock_server import KEY, VOCAB, ServerThread
from tests.integration.quota_semantics import BackendFactory, flush
from tests.redis_server import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of this test's own, on a Unix socket in its tmp_path."""
    running = RedisServer(tmp_path).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def mock() -> Iterator[ServerThread]:
    """The mock provider on a real socket, shared by one module's tests."""
    tokens.use_vocab_dir(VOCAB)
    srv = ServerThread()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def keyed_mock() -> Iterator[ServerThread]:
    """The mock provider that answers only callers presenting `KEY`."""
    tokens.use_vocab_dir(VOCAB)
    srv = ServerThread(require_key=KEY)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server per module of the backend-semantics suite (flushed per test)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["memory", "redis"])
def backend_factory(request: pytest.FixtureRequest) -> BackendFactory:
    """Runs the test once per backend: the suite's whole point is that both answer alike."""
    if request.param == "memory":
        return BackendFactory("memory")
    server: RedisServer = request.getfixturevalue("redis_server")
    flush(server)
    return BackendFactory("redis", server)
