"""Hot reload of policies and credential files, on volumes laid out exactly as the kubelet
writes a mounted ConfigMap or Secret. Every round is driven by `await reloader.check()`, so
nothing here waits on a timer."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from extproc.gate.credentials import CredentialSource
from extproc.gate.replies import Deferred
from extproc.gate.runtime import CredentialsHolder, Limits, Runtime, SnapshotHolder
from extproc.policy import load_directory
from extproc.providers.tokens import TokenCounter
from extproc.quota import MemoryBackend
from extproc.quota.failover import FailoverStore
from extproc.serve.reload import Reloader, fingerprint_directory
from extproc.telemetry.events import Event, EventBus
from extproc.telemetry.metrics import Metrics
from tests import envoy_messages as em
from tests.gate_driver import start
from tests.kubelet import KubeletVolume

KEY = "tg-reload"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
PROMPT = 1 + 3 + 3  # "hello" + message framing + reply priming


@dataclass(frozen=True)
class Version:
    """One policy version: its limits are what a request's headers and refusals reveal."""

    ns_requests: int
    ns_tokens: int
    key_requests: int

    def files(self, *, key_limit: str = "key-rpm") -> dict[str, str]:
        team = f"""
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: team, namespace: team}}
spec:
  models: {{allow: ["gpt-4o*"]}}
  defaultMaxTokens: 10
  limits:
    - {{name: rpm, requests: {self.ns_requests}, per: 366d}}
    - {{name: tpm, tokens: {self.ns_tokens}, per: 366d}}
"""
        keys = f"""
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: svc, namespace: team}}
spec:
  sha256: {hashlib.sha256(KEY.encode()).hexdigest()}
  limits: [{{name: {key_limit}, requests: {self.key_requests}, per: 366d}}]
"""
        return {"team.yaml": team, "keys.yaml": keys}


A = Version(ns_requests=1000, ns_tokens=100_000, key_requests=10)
B = Version(ns_requests=2000, ns_tokens=200_000, key_requests=20)

BAD_KEYS = """
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {name: svc, namespace: team}
spec: {sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {name: other, namespace: team}
spec:
  sha256: 60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
  limits: [{name: rpm, requests: lots, per: 1m}]
"""


class RecordingBus(EventBus):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Event] = []

    def publish(self, event: Event) -> None:
        self.seen.append(event)
        super().publish(event)


class Setup:
    """A policy volume, a credential volume, and the reloader watching both."""

    def __init__(self, root: Path, version: Version = A) -> None:
        self.volume = KubeletVolume(root / "policies")
        self.volume.write(version.files())
        self.secret = KubeletVolume(root / "openai-key")
        self.secret.write({"api-key": "sk-old-0123456789"})
        self.source = CredentialSource(file=self.secret.root / "api-key")
        self.metrics = Metrics()
        self.events = RecordingBus()
        self.holder = SnapshotHolder(load_directory(self.volume.root, now=lambda: 1.0))
        first = self.source.load()
        assert first is not None
        self.credentials = CredentialsHolder({"openai": first})
        self.reloader = Reloader(
            policies=self.holder,
            policy_dirs=(self.volume.root,),
            allow_usd=False,
            credentials=self.credentials,
            credential_sources={"openai": self.source},
            metrics=self.metrics,
            events=self.events,
            clock=lambda: 2.0,
        )

    def reloads(self, result: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "tokengate_policy_reloads_total", {"result": result}
        )
        return value or 0.0

    def gauge(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def runtime(self) -> Runtime:
        return Runtime(
            policies=self.holder,
            store=FailoverStore(local=MemoryBackend(), shared=None, metrics=self.metrics),
            counter=TokenCounter(threads=1),
            credentials=self.credentials,
            metrics=self.metrics,
            limits=Limits(max_body_bytes=10_000),
            events=self.events,
        )


def test_a_valid_update_swaps_the_snapshot_whole_and_is_announced(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    old = s.holder.current
    assert asyncio.run(s.reloader.check()) is False  # nothing changed since start-up
    s.volume.write(B.files())
    assert asyncio.run(s.reloader.check()) is True
    new = s.holder.current
    assert new.version not in ("", old.version)
    assert [limit.amount for limit in new.policies["team"].limits] == [2000, 200_000]
    assert [limit.amount for limit in old.policies["team"].limits] == [1000, 100_000]  # intact
    assert s.reloader.last_error == ""
    assert s.reloader.last_reload_at == 2.0
    assert [(e.kind, e.message) for e in s.events.seen] == [
        ("reload", f"policy {old.version} -> {new.version}")
    ]
    assert s.reloads("success") == 1
    assert s.gauge("tokengate_policy_last_reload_success") == 1
    assert s.gauge("tokengate_policy_info", version=new.version) == 1
    assert s.gauge("tokengate_policy_info", version=old.version) == 0


def test_an_invalid_update_keeps_the_old_snapshot_and_a_valid_one_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = Setup(tmp_path)
    good = s.holder.current
    s.volume.write({**B.files(), "keys.yaml": BAD_KEYS})
    with caplog.at_level(logging.ERROR, logger="extproc.serve.reload"):
        assert asyncio.run(s.reloader.check()) is True
    assert s.holder.current is good
    where = "keys.yaml (document 2): spec.limits[0].requests"
    assert where in s.reloader.last_error
    assert "positive integer" in s.reloader.last_error
    assert [e.kind for e in s.events.seen] == ["reload_error"]
    assert where in s.events.seen[0].message
    assert where in caplog.text
    assert s.reloads("error") == 1
    assert s.gauge("tokengate_policy_last_reload_success") == 0

    # Reported once: the next rounds see nothing new.
    assert asyncio.run(s.reloader.check()) is False
    assert s.reloads("error") == 1

    s.volume.write(B.files())
    assert asyncio.run(s.reloader.check()) is True
    assert s.holder.current.policies["team"].limits[0].amount == 2000
    assert s.reloader.last_error == ""
    assert [e.kind for e in s.events.seen] == ["reload_error", "reload"]
    assert s.gauge("tokengate_policy_last_reload_success") == 1


def test_reverting_a_bad_update_to_the_content_in_force_clears_the_error(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    good = s.holder.current
    s.volume.write({**A.files(), "keys.yaml": BAD_KEYS})
    asyncio.run(s.reloader.check())
    s.volume.write(A.files())
    assert asyncio.run(s.reloader.check()) is True
    assert s.holder.current is good  # same version: nothing to swap
    assert s.reloader.last_error == ""
    assert s.gauge("tokengate_policy_last_reload_success") == 1


def test_no_change_means_no_reload(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    snapshot = s.holder.current
    print_before = fingerprint_directory(s.volume.root)
    (s.volume.root / ".scratch").write_text("hidden names are the kubelet's, not ours")
    for _ in range(3):
        assert asyncio.run(s.reloader.check()) is False
    assert fingerprint_directory(s.volume.root) == print_before
    # Same content in a new kubelet version: re-read, but nothing applied or announced.
    s.volume.write(A.files())
    assert asyncio.run(s.reloader.check()) is False
    assert s.holder.current is snapshot
    assert s.events.seen == []
    assert (s.reloads("success"), s.reloads("error")) == (0, 0)


def test_fingerprint_moves_with_each_kubelet_swap(tmp_path: Path) -> None:
    volume = KubeletVolume(tmp_path)
    volume.write(A.files())
    first = fingerprint_directory(tmp_path)
    volume.write(A.files())  # same bytes, new version directory
    second = fingerprint_directory(tmp_path)
    assert first != second
    assert first[0] != second[0]  # the `..data` target
    assert [entry[0] for entry in first[1:]] == ["keys.yaml", "team.yaml"]  # type: ignore[index]


def test_a_rotated_credential_is_used_and_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = Setup(tmp_path)
    before = s.credentials.current
    new_key = "sk-new-rotated-ABCDEF987654"
    caplog.set_level(logging.DEBUG)
    s.secret.write({"api-key": new_key + "\n"})
    assert asyncio.run(s.reloader.check()) is True
    assert s.credentials.current["openai"].reveal() == new_key
    assert s.credentials.current is not before  # swapped whole ...
    assert before["openai"].reveal() == "sk-old-0123456789"  # ... the old mapping untouched
    assert [(e.kind, e.message) for e in s.events.seen] == [
        ("reload", "credential for openai rotated")
    ]
    assert "credential for openai rotated" in caplog.text
    assert asyncio.run(s.reloader.check()) is False

    # The next request injects the new key.
    rt = s.runtime()
    _, reply = asyncio.run(start(rt, em.request_headers(KEY)))
    headers = em.set_headers(reply.request_headers.response.header_mutation)
    assert headers["authorization"] == f"Bearer {new_key}"

    # An empty, then a vanished key file: the last good key stays, each is an error.
    s.secret.write({"api-key": "  \n"})
    assert asyncio.run(s.reloader.check()) is True
    (s.secret.root / "api-key").unlink()
    assert asyncio.run(s.reloader.check()) is True
    assert s.credentials.current["openai"].reveal() == new_key
    assert [e.kind for e in s.events.seen][1:] == ["reload_error", "reload_error"]
    assert "is empty" in s.events.seen[1].message
    assert "cannot read credential file" in s.events.seen[2].message
    assert s.reloads("error") == 2
    assert s.gauge("tokengate_policy_last_reload_success") == 0
    assert s.reloader.last_error == ""  # the policy itself is fine

    # The same key back: nothing to swap, but the error clears.
    s.secret.write({"api-key": new_key})
    assert asyncio.run(s.reloader.check()) is True
    assert s.events.seen[-1].message == "credential for openai readable again"
    assert s.gauge("tokengate_policy_last_reload_success") == 1

    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    for secret in (new_key, "sk-old-0123456789"):
        assert secret not in logged
        assert all(secret not in e.message for e in s.events.seen)


# -- no request sees a mixture ----------------------------------------------------------


@dataclass
class Seen:
    """What one request flow revealed, and which version was in force around its phases."""

    at_headers: str  # snapshot version in force when its headers were processed
    at_body: str  # ... and when its body was
    limit_requests: int
    limit_tokens: int
    refusal: str | None  # the refusal message, if refused


def _header_values(reply: Any) -> dict[str, str]:
    if reply.HasField("immediate_response"):
        return em.set_headers(reply.immediate_response.headers)
    return em.set_headers(reply.response_headers.response.header_mutation)


async def _flow(rt: Runtime) -> Seen:
    at_headers = rt.policies.current.version
    processor, _ = await start(rt, em.request_headers(KEY))
    await asyncio.sleep(0)  # let the reloader swap between this request's phases
    at_body = rt.policies.current.version
    reply = await processor.on_request_body(em.body(CHAT))
    assert not isinstance(reply, Deferred), "no capacity is declared: nothing waits"
    refusal = None
    if reply.HasField("immediate_response"):
        assert reply.immediate_response.status.code == 429
        refusal = reply.immediate_response.body.decode()
    else:
        reply = await processor.on_response_headers(em.response_headers(200))
        await processor.on_response_body(em.body(em.completion(PROMPT, 3)))
    await processor.finish()
    headers = _header_values(reply)
    return Seen(
        at_headers,
        at_body,
        int(headers["x-ratelimit-limit-requests"]),
        int(headers["x-ratelimit-limit-tokens"]),
        refusal,
    )


def _version_of(version: Version, directory: Path) -> str:
    directory.mkdir()
    for name, text in version.files().items():
        (directory / name).write_text(text)
    return load_directory(directory).version


SWAPS, WORKERS = 3, 20  # rounds of B then A; request flows in flight at every swap
MAX_SWAPS = 30  # bounds the run if coverage never comes; the asserts then say why
_REFUSAL = re.compile(r"limit 'key-rpm' of team/svc: limit (\d+) requests per .*?, used (\d+)")


def test_no_request_is_evaluated_against_a_mixture_of_versions(
    tmp_path: Path, vocab_dir: Path
) -> None:
    """Concurrent request flows while the volume flips between A and B. Each flow must
    show, in both its headers and its refusal, exactly the limits of the version in force
    when its headers were processed: a processor that read the holder again in a later
    phase would show the other version for the flows that straddle a swap (counted, so the
    test proves it had such flows)."""
    s = Setup(tmp_path, A)
    rt = s.runtime()
    by_version = {_version_of(v, tmp_path / name): v for name, v in (("a", A), ("b", B))}
    swaps = 0
    seen: list[Seen] = []
    outcomes: set[tuple[Version, bool]] = set()  # (version, admitted) pairs seen so far

    def more() -> bool:
        """At least SWAPS rounds, and on until both versions admitted and refused (bounded)."""
        return swaps < MAX_SWAPS and (swaps < 2 * SWAPS or len(outcomes) < 4)

    async def swapper() -> None:
        nonlocal swaps
        versions = itertools.cycle([B, A])
        while more():
            s.volume.write(next(versions).files())
            assert await s.reloader.check()
            assert s.holder.current.version in by_version
            swaps += 1

    async def worker() -> None:
        while more():
            flow = await _flow(rt)
            seen.append(flow)
            outcomes.add((by_version[flow.at_headers], flow.refusal is None))

    async def scenario() -> None:
        await asyncio.gather(swapper(), *(worker() for _ in range(WORKERS)))

    asyncio.run(scenario())
    assert s.reloader.last_error == ""
    for flow in seen:
        version = by_version[flow.at_headers]
        assert (flow.limit_requests, flow.limit_tokens) == (
            version.key_requests,
            version.ns_tokens,
        ), flow
        if flow.refusal is not None:
            match = _REFUSAL.search(flow.refusal)
            assert match is not None, flow.refusal
            limit, used = int(match[1]), int(match[2])
            assert limit == version.key_requests, flow
            # Refused below this version's limit = enforced with another version's amount.
            assert used + 1 > limit, flow
    straddling = [f for f in seen if f.at_headers != f.at_body]
    assert straddling, "no flow straddled a swap: the test would not catch a re-read"
    assert outcomes == {(A, True), (A, False), (B, True), (B, False)}
