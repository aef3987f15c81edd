"""Runtime wiring: everything one worker's processors share, built from the settings (policy
snapshot, provider keys, token counter, quota store with its failover, metrics, events)."""

from __future__ import annotations

import logging

from extproc.backends.health import HealthStore
from extproc.backends.memory import MemoryHealth
from extproc.backends.redis import RedisHealth
from extproc.gate.credentials import Secret
from extproc.gate.key_ring import KeyRing
from extproc.gate.runtime import CredentialsHolder, Current, Limits, Runtime, SnapshotHolder
from extproc.policy import PolicySnapshot, load_directories
from extproc.policy.overrides import OverrideBook
from extproc.policy.prices import load_price_table
from extproc.providers import tokens
from extproc.quota import MemoryBackend
from extproc.quota.backends.redis import RedisBackend, connect
from extproc.quota.backends.redis_liveness import Instance
from extproc.quota.costing import check_prices
from extproc.quota.failover import FailoverStore
from extproc.serve.key_files import read_ring
from extproc.serve.settings import ServeSettings
from extproc.telemetry.events import EventBus
from extproc.telemetry.ledger import Ledger
from extproc.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


def build_runtime(settings: ServeSettings) -> Runtime:
    """Everything a worker needs; must run inside its event loop (the Redis pool binds to
    it)."""
    tokens.use_vocab_dir(settings.vocab_dir)
    prices = load_price_table(settings.price_table) if settings.price_table else None
    snapshot = load_directories(settings.policy_dirs, allow_usd=prices is not None)
    check_prices(snapshot, prices)
    credentials: dict[str, Secret] = {}
    for upstream, source in settings.credentials.items():
        secret = source.load()
        if secret is not None:
            credentials[upstream] = secret
    counter = tokens.TokenCounter(threads=settings.tokenizer_threads)
    counter.warm_up()
    metrics = Metrics()
    metrics.policy_version.labels(snapshot.version).set(1)
    shared, client = None, None
    if settings.shared_store:
        client = connect(
            settings.quota_store,
            timeout_s=settings.store_timeout_s,
            max_in_flight=settings.store_connections,
            password=settings.quota_store_password(),
        )
        shared = RedisBackend(
            client,
            lease_ttl_s=settings.lease_ttl_s,
            timeout_s=settings.store_timeout_s,
            instance=Instance.new(ttl_s=settings.instance_ttl_s),
        )
        shared.start_heartbeat()  # this worker's liveness, until the store is closed
    events = EventBus()
    health: HealthStore = (
        RedisHealth(client, settings.health_policy, timeout_s=settings.store_timeout_s)
        if client is not None
        else MemoryHealth(settings.health_policy)
    )
    store = FailoverStore(
        local=MemoryBackend(lease_ttl_s=settings.lease_ttl_s), shared=shared, metrics=metrics,
        probe_interval_s=settings.probe_interval_s, events=events,
        max_in_flight=settings.store_connections,
    )  # fmt: skip
    return Runtime(
        policies=SnapshotHolder(snapshot),
        store=store,
        counter=counter,
        credentials=CredentialsHolder(credentials),
        metrics=metrics,
        limits=Limits(
            max_body_bytes=settings.max_body_bytes,
            first_byte_timeout_s=settings.first_byte_timeout_s,
        ),
        prices=prices,
        events=events,
        overrides=OverrideBook(client=client),
        ledger=Ledger(client=client),
        health=health,
        keys=Current(_key_ring(snapshot)),
    )


def _key_ring(snapshot: PolicySnapshot) -> KeyRing:
    """The pools' keys at start; one that cannot be read is reported and left out (the
    reloader picks it up once its file is fixed), never a reason not to start."""
    ring, problems = read_ring(snapshot)
    for problem in problems:
        log.error("provider key not usable: %s", problem)
    return ring
