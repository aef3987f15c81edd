"""The sync loop: LIST, write, then WATCH from the listed resourceVersion, applying each
event as it comes, the way client-go's reflector does.

The directory only ever changes to reflect what the API server said. When the server is
unreachable or refuses us, the files already written stay as they are (the sidecar keeps
enforcing them) and we retry with capped exponential backoff, then list again: a LIST is
the truth after a gap, including deletions we missed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable

from extproc.kube.policysync._content import ConfigMap, Verdict, evaluate
from extproc.kube.policysync._kubeapi import KubeApiError, KubeClient, ResourceExpired, WatchEvent
from extproc.kube.policysync._writer import AtomicDirectory

log = logging.getLogger(__name__)

_LOGGED_NAMES = 10
_MIN_WATCH_S = 1.0  # a watch that ends sooner, having said nothing, is retried after a delay


class Backoff:
    """Capped exponential delays with jitter, so a DaemonSet's pods do not all reconnect
    to a recovering API server in the same instant."""

    def __init__(self, *, first_s: float = 1.0, cap_s: float = 30.0) -> None:
        self._first_s = first_s
        self._cap_s = cap_s
        self._failures = 0

    def next(self) -> float:
        delay = min(self._cap_s, self._first_s * 2.0**self._failures)
        self._failures = min(self._failures + 1, 32)  # 2**32 s is past any cap
        return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret

    def reset(self) -> None:
        self._failures = 0


class PolicySync:
    """Keeps `writer`'s directory equal to the policy files of the ConfigMaps `client`
    sees. `sync_once` for an init container; `run` until `stop` for the sidecar."""

    def __init__(
        self,
        *,
        client: KubeClient,
        writer: AtomicDirectory,
        home_namespace: str,
        resync_s: int = 300,
        backoff: Backoff | None = None,
    ) -> None:
        self._client = client
        self._writer = writer
        self._home = home_namespace
        self._resync_s = resync_s
        self._backoff = backoff or Backoff()
        self._verdicts: dict[tuple[str, str], Verdict] = {}
        self._reported: dict[tuple[str, str], str] = {}  # refused ConfigMap -> its version
        self._stop = threading.Event()
        self._expired_again = False

    def sync_once(self) -> str:
        """LIST and write; the resourceVersion to watch from. Raises KubeApiError."""
        listing = self._client.list_configmaps()
        self._verdicts = {}
        for cm in listing.items:
            self._store(cm)
        self._flush()
        return listing.resource_version

    def run(self) -> None:
        """Until `stop`: list, then watch, re-watching from the last version seen when a
        watch ends, and listing again after 410 Gone or any failure."""
        while not self._stop.is_set():
            delay = 0.0
            try:
                version = self.sync_once()
                while not self._stop.is_set():
                    version = self._watch(version)
            except ResourceExpired:
                delay = self._on_expired()
            except (KubeApiError, OSError) as exc:
                if self._stop.is_set():
                    break
                delay = self._backoff.next()
                self._log_failure(exc, delay)
            self._stop.wait(delay)

    def stop(self) -> None:
        """From any thread or a signal handler: ends a blocked watch at once."""
        self._stop.set()
        self._client.close()

    def _watch(self, version: str) -> str:
        """One watch request; the last resourceVersion seen when it ends normally. A watch
        that ends at once having said nothing (a proxy cutting streams) is retried after a
        backoff delay, so such a proxy cannot make us hammer the API server."""
        started = time.monotonic()
        heard = False
        for event in self._client.watch_configmaps(version, timeout_s=self._resync_s):
            version = self._apply(event)
            heard = True
            self._backoff.reset()
            self._expired_again = False
        if not heard and time.monotonic() - started < _MIN_WATCH_S:
            self._stop.wait(self._backoff.next())
        return version

    def _apply(self, event: WatchEvent) -> str:
        cm = event.configmap
        if cm is not None:
            if event.type == "DELETED":
                self._verdicts.pop((cm.namespace, cm.name), None)
            else:
                self._store(cm)
            self._flush()
        return event.resource_version

    def _on_expired(self) -> float:
        """List again at once; a second 410 in a row, with nothing heard between, waits."""
        log.info("policy-sync: resourceVersion expired (410 Gone), listing again")
        delay = self._backoff.next() if self._expired_again else 0.0
        self._expired_again = True
        return delay

    def _store(self, cm: ConfigMap) -> None:
        """Judge a ConfigMap once per version; a refusal is logged once per version too."""
        key = (cm.namespace, cm.name)
        verdict = evaluate(cm, home_namespace=self._home)
        self._verdicts[key] = verdict
        if verdict.problem is None:
            self._reported.pop(key, None)
        elif self._reported.get(key) != cm.resource_version:
            self._reported[key] = cm.resource_version
            log.error("policy-sync: %s", verdict.problem)

    def _flush(self) -> None:
        """Write the union of every accepted ConfigMap's files, if it changed."""
        files: dict[str, bytes] = {}
        used: list[str] = []
        for (namespace, name), verdict in sorted(self._verdicts.items()):
            if verdict.files:
                files.update(verdict.files)
                used.append(f"{namespace}/{name}")
        if self._writer.write(files):
            log.info(
                "policy-sync: synced %d ConfigMaps (%s) into %s",
                len(used),
                _names(used),
                self._writer.root,
            )

    def _log_failure(self, exc: Exception, delay: float) -> None:
        """Errors for what a person must fix (RBAC, token, the disk); warnings for outages."""
        needs_fixing = isinstance(exc, OSError) or getattr(exc, "status", None) in (401, 403)
        log.log(
            logging.ERROR if needs_fixing else logging.WARNING,
            "policy-sync: %s; keeping the policy files already written, retrying in %.1fs",
            exc,
            delay,
        )


def _names(refs: Iterable[str]) -> str:
    refs = list(refs)
    shown = ", ".join(refs[:_LOGGED_NAMES])
    if len(refs) > _LOGGED_NAMES:
        shown += f", … and {len(refs) - _LOGGED_NAMES} more"
    return shown or "none"
