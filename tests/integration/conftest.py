"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of this test's own, on a Unix socket in its tmp_path."""
    running = RedisServer(tmp_path).start()
    yield running
    running.stop()
