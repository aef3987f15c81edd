"""`tokengate policy-sync`: copy labelled policy ConfigMaps into the sidecar's policy
directory, so `kubectl apply -f team-b-policy.yaml` reaches every sidecar without a restart.

It runs as a container beside the sidecar (and, with `--once`, as an init container so the
sidecar starts with its policies present). It LISTs and WATCHes ConfigMaps through the API
server (`_kubeapi`), decides which files each may contribute (`_content`: a ConfigMap outside
the tokengate namespace may only govern its own namespace), and writes them kubelet-style
into a shared emptyDir (`_writer`), which the sidecar's Reloader already polls.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from extproc.kube.policysync._content import ConfigMap, evaluate, file_name
from extproc.kube.policysync._kubeapi import ApiTarget, KubeApiError, KubeClient
from extproc.kube.policysync._settings import SyncSettings, settings_from_args
from extproc.kube.policysync._sync import Backoff, PolicySync
from extproc.kube.policysync._writer import AtomicDirectory

__all__ = [
    "ApiTarget",
    "AtomicDirectory",
    "Backoff",
    "ConfigMap",
    "KubeClient",
    "PolicySync",
    "evaluate",
    "file_name",
    "run",
    "settings_from_args",
]

log = logging.getLogger(__name__)


def run(settings: SyncSettings) -> int:
    """The command: 0 on a clean stop, 1 when `--once` could not list."""
    scope = settings.target.namespace or "all namespaces"
    log.info(
        "policy-sync: ConfigMaps labelled %s in %s (tokengate namespace %s) -> %s",
        settings.target.selector,
        scope,
        settings.home_namespace,
        settings.dest,
    )
    sync = PolicySync(
        client=KubeClient(target=settings.target),
        writer=AtomicDirectory(root=settings.dest),
        home_namespace=settings.home_namespace,
        resync_s=settings.resync_s,
    )
    if settings.once:
        try:
            sync.sync_once()
        except (KubeApiError, OSError) as exc:
            log.error("policy-sync --once failed: %s", exc)
            return 1
        return 0
    with _stop_on_signals(sync):
        sync.run()
    return 0


@contextlib.contextmanager
def _stop_on_signals(sync: PolicySync) -> Iterator[None]:
    """SIGTERM (the kubelet stopping the pod) and SIGINT end the loop cleanly, even while a
    watch is blocked reading. Handlers can only be set from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        sync.stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
