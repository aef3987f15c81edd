"""Hot reload of the policy directory, the provider credential files and the key pools'
files, without a restart.

Both are mounted volumes (a ConfigMap, a Secret) that the kubelet updates by writing a new
hidden `..<timestamp>` directory and renaming a `..data` symlink over the old one. So a
cheap fingerprint (a few `stat` calls) is taken every interval; only when it moves is the
content read again, off the event loop. A valid policy set replaces the snapshot whole (one
reference assignment): a request that already read the old one keeps it for its whole life,
so none is evaluated against a mixture. An invalid one leaves the last good snapshot in
force and is reported in the log, a metric, `last_error` (for the control API) and an event.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from prometheus_client import Counter, Gauge

from extproc.errors import ConfigError
from extproc.gate.credentials import CredentialSource
from extproc.gate.runtime import CredentialsHolder, SnapshotHolder
from extproc.policy import PolicySnapshot, load_directories
from extproc.policy.prices import PriceTable
from extproc.quota.costing import check_prices
from extproc.serve.key_files import KeyPoolWatch
from extproc.telemetry.events import Event, EventBus
from extproc.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

Fingerprint = tuple[object, ...]


def _stat(path: Path) -> Fingerprint:
    """Resolved target, size and mtime: a kubelet update changes the target at least."""
    try:
        st = os.stat(path)  # follows symlinks
    except OSError as exc:
        return (str(path), "unreadable", exc.errno)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


def fingerprint_directory(path: Path) -> Fingerprint:
    """The `..data` target (if any) and every visible entry's name and `_stat`. Hidden names
    are the kubelet's machinery; its atomic swap always moves `..data`."""
    data = path / "..data"
    target = os.path.realpath(data) if os.path.lexists(data) else None
    try:
        names = sorted(n for n in os.listdir(path) if not n.startswith("."))
    except OSError as exc:
        return (target, "unreadable", exc.errno)
    return (target, *((name, *_stat(path / name)) for name in names))


class Reloader:
    """Watches the policy directory and credential files; `run` polls, `check` does one
    round (tests call it directly). One per worker process, beside its `Runtime`."""

    def __init__(
        self,
        *,
        policies: SnapshotHolder,
        policy_dirs: Sequence[Path],
        allow_usd: bool,
        credentials: CredentialsHolder,
        credential_sources: Mapping[str, CredentialSource],
        metrics: Metrics,
        events: EventBus,
        interval_s: float = 1.0,
        prices: PriceTable | None = None,
        clock: Callable[[], float] = time.time,
        pools: KeyPoolWatch | None = None,
    ) -> None:
        self._policies = policies
        self._policy_dirs = tuple(policy_dirs)
        self._allow_usd = allow_usd
        self._prices = prices
        self._credentials = credentials
        self._files = {name: s.file for name, s in credential_sources.items() if s.file}
        self._sources = credential_sources
        self._metrics = metrics
        self._events = events
        self._interval_s = interval_s
        self._clock = clock
        self._pools = pools
        # For the control API: why the policy on disk is not in force ("" when it is), and
        # when the snapshot in force was loaded.
        self.last_error = ""
        self.last_reload_at = policies.current.loaded_at
        # Unknown: the first round reads everything once, so an update that landed between
        # the start-up load and now is not missed (same content changes nothing).
        self._policy_print: Fingerprint | None = None
        self._file_prints: dict[str, Fingerprint | None] = dict.fromkeys(self._files)
        self._reloads = Counter(
            "tokengate_policy_reloads",
            "Policy and credential reloads attempted after a change on disk, by result.",
            ["result"],
            registry=metrics.registry,
        )
        self._success = Gauge(
            "tokengate_policy_last_reload_success",
            "1 when the last policy or credential reload succeeded, 0 when it was refused.",
            registry=metrics.registry,
            multiprocess_mode="min",
        )
        self._success.set(1)
        self._failing: set[str] = set()

    async def run(self) -> None:
        """Poll until cancelled. An unexpected failure is logged and the next round tried:
        a reloader that died silently would leave stale policies in force forever."""
        while True:
            try:
                await self.check()
            except Exception:  # must outlive a bug in one round
                log.exception("policy reload round failed; retrying next interval")
            await asyncio.sleep(self._interval_s)  # the poll interval, not synchronisation

    async def check(self) -> bool:
        """One round; True when something was applied (a new snapshot, a new key) or an
        error reported or cleared. Content rewritten unchanged is not a change."""
        policies_changed = await self._check_policies()
        credentials_changed = await self._check_credentials()
        pools_reported = False
        if self._pools is not None:
            for problem in await self._pools.check(self._policies.current):
                self._report("key-pools", f"provider key not usable: {problem}")
                pools_reported = True
        return policies_changed or credentials_changed or pools_reported

    async def _check_policies(self) -> bool:
        seen = self._fingerprint()
        if seen == self._policy_print:
            return False
        snapshot = await asyncio.to_thread(self._load)
        if self._fingerprint() != seen:
            # Swapped while we read file by file: what we read may mix two versions (or name
            # a directory the kubelet just removed). Apply nothing; read again next round.
            return False
        self._policy_print = seen  # so a bad update is reported once, not every interval
        if isinstance(snapshot, ConfigError):
            self.last_error = str(snapshot)
            self._report("policy", f"policy reload refused, keeping the last good: {snapshot}")
            return True
        old = self._policies.current
        if snapshot.version != old.version:
            self._policies.swap(snapshot)
            self._metrics.policy_version.labels(old.version).set(0)
            self._metrics.policy_version.labels(snapshot.version).set(1)
        elif not self.last_error:
            return False  # the same content rewritten: nothing to apply, nothing to report
        self.last_error = ""
        self.last_reload_at = snapshot.loaded_at
        self._report("policy", f"policy {old.version} -> {snapshot.version}", ok=True)
        return True

    def _fingerprint(self) -> Fingerprint:
        return tuple(fingerprint_directory(path) for path in self._policy_dirs)

    def _load(self) -> PolicySnapshot | ConfigError:
        """In a worker thread. The error is returned: it counts only if the directory held
        still while we read it."""
        try:
            snapshot = load_directories(
                self._policy_dirs, allow_usd=self._allow_usd, now=self._clock
            )
            if self._prices is not None:
                check_prices(snapshot, self._prices)
        except ConfigError as exc:
            return exc
        return snapshot

    async def _check_credentials(self) -> bool:
        """Re-read the changed files; a file that cannot be used keeps its old key. Messages
        name the cluster and the file, never the key."""
        seen = {name: _stat(path) for name, path in self._files.items()}
        changed = sorted(name for name in seen if seen[name] != self._file_prints[name])
        if not changed:
            return False
        fresh = dict(self._credentials.current)
        reported = False
        for name in changed:
            self._file_prints[name] = seen[name]
            source = f"key:{name}"
            try:
                secret = await asyncio.to_thread(self._sources[name].load)
            except ConfigError as exc:
                self._report(source, f"credential for {name} not rotated, keeping the old: {exc}")
                reported = True
                continue
            old = fresh.get(name)
            if secret is not None and (old is None or old.reveal() != secret.reveal()):
                fresh[name] = secret
                self._report(source, f"credential for {name} rotated", ok=True)
                reported = True
            elif source in self._failing:  # readable again, same key: clear the error
                self._report(source, f"credential for {name} readable again", ok=True)
                reported = True
        if fresh != self._credentials.current:
            self._credentials.swap(fresh)
        return reported

    def _report(self, source: str, message: str, *, ok: bool = False) -> None:
        """Log, count and publish one outcome; the gauge is 0 while any source (the policy
        directory, a credential file) is stuck on a refused update."""
        if ok:
            self._failing.discard(source)
        else:
            self._failing.add(source)
        self._reloads.labels("success" if ok else "error").inc()
        self._success.set(0 if self._failing else 1)
        log.log(logging.INFO if ok else logging.ERROR, "%s", message)
        self._events.publish(Event(kind="reload" if ok else "reload_error", message=message))
