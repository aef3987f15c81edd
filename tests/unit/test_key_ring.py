"""Provider key pools: turns over usable keys, 401s and expiry, and reading the files."""

from __future__ import annotations

import asyncio
from pathlib import Path

from extproc.gate.credentials import Secret
from extproc.gate.key_ring import KeyChooser, KeyRing, RingKey
from extproc.gate.runtime import Current
from extproc.policy import parse_documents
from extproc.policy.model import KeyPool, PolicySnapshot
from extproc.serve.key_files import KeyPoolWatch, read_ring
from extproc.telemetry.events import Event, EventBus
from extproc.telemetry.metrics import Metrics

NOW = 1_800_000_000.0


def _key(name: str, value: str, expires_at: float | None = None) -> RingKey:
    return RingKey(
        pool="p", name=name, secret=Secret(value), expires_at=expires_at, warn_before_s=86400
    )


def test_usable_keys_take_turns_and_a_refused_one_leaves_until_rotated() -> None:
    ring = KeyRing(pools={"p": (_key("a", "ka"), _key("b", "kb"))})
    chooser = KeyChooser()
    turns = [chooser.choose(ring, "p", now=NOW) for _ in range(4)]
    assert [k.name for k in turns if k] == ["a", "b", "a", "b"]
    first = turns[0]
    assert first is not None
    assert chooser.disable(first) is True and chooser.disable(first) is False
    assert {k.name for k in (chooser.choose(ring, "p", now=NOW) for _ in range(3)) if k} == {"b"}
    rotated = KeyRing(pools={"p": (_key("a", "ka-new"), _key("b", "kb"))})
    names = {k.name for k in (chooser.choose(rotated, "p", now=NOW) for _ in range(4)) if k}
    assert names == {"a", "b"}  # a new value is a new fingerprint: back in turn


def test_an_expired_key_is_not_used_and_an_empty_pool_gives_none() -> None:
    ring = KeyRing(pools={"p": (_key("old", "k1", expires_at=NOW - 1), _key("new", "k2"))})
    chooser = KeyChooser()
    assert {k.name for k in (chooser.choose(ring, "p", now=NOW) for _ in range(3)) if k} == {"new"}
    assert chooser.choose(ring, "unknown", now=NOW) is None
    assert chooser.choose(KeyRing(pools={"p": (_key("old", "k1", NOW - 1),)}), "p", now=NOW) is None


def _snapshot(tmp_path: Path, *, expires: str = "") -> PolicySnapshot:
    when = f", expires: '{expires}'" if expires else ""
    text = f"""
apiVersion: tokengate.dev/v1
kind: ProviderKeyPool
metadata: {{name: pool}}
spec:
  provider: openai
  keys:
  - {{name: a, file: {tmp_path / "a"}{when}}}
  - {{name: missing, file: {tmp_path / "missing"}}}
"""
    pools = [d for d in parse_documents(text, file="pools.yaml") if isinstance(d, KeyPool)]
    return PolicySnapshot(
        policies={}, keys_by_sha256={}, version="v", loaded_at=0.0, key_pools=tuple(pools)
    )


def test_unreadable_key_files_are_named_never_shown(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("sk-secret-value\n")
    ring, problems = read_ring(_snapshot(tmp_path))
    assert [k.name for k in ring.pools["pool"]] == ["a"]
    assert ring.pools["pool"][0].secret.reveal() == "sk-secret-value"
    assert len(problems) == 1 and "pool/missing" in problems[0]
    assert "sk-secret" not in problems[0]


class _Published(EventBus):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Event] = []

    def publish(self, event: Event) -> None:
        self.seen.append(event)


def test_a_key_near_its_expiry_is_warned_about_once(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("sk-a\n")
    keys: Current[KeyRing] = Current(KeyRing())
    metrics, events = Metrics(), _Published()
    watch = KeyPoolWatch(keys=keys, metrics=metrics, events=events, clock=lambda: NOW)
    snapshot = _snapshot(tmp_path, expires="2027-01-16T00:00:00Z")  # about 5 days after NOW

    async def twice() -> None:
        await watch.check(snapshot)
        await watch.check(snapshot)

    asyncio.run(twice())
    assert [e.kind for e in events.seen] == ["key_expiring"]
    assert "pool/a expires in" in events.seen[0].message and "sk-a" not in events.seen[0].message
    left = metrics.key_expiry.labels("pool", "a")._value.get()
    assert 0 < left < 14 * 86400
