"""Settings of `tokengate policy-sync`, checked once at start-up.

Defaults are what a pod sees: the in-cluster API address and the service-account files the
kubelet mounts. Only what can never work is refused here (a missing token or CA file, no
namespace): a file that exists but fails later (a rotation, a rejected token) is retried
by the loop, with the files already written kept in force.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from extproc.errors import ConfigError
from extproc.kube.policysync._kubeapi import ApiTarget

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
NAMESPACE_FILE = SERVICE_ACCOUNT / "namespace"


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncSettings:
    target: ApiTarget
    home_namespace: str  # the tokengate namespace: its ConfigMaps may govern any namespace
    dest: Path
    resync_s: int
    once: bool


def settings_from_args(args: argparse.Namespace) -> SyncSettings:
    """From the `policy-sync` flags (see extproc/cli.py); ConfigError names the flag."""
    url = args.api_url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--api-url must be https://host[:port] (or http://), got {url!r}")
    if not args.selector.strip():
        raise ConfigError("--selector must not be empty: every ConfigMap would become policy")
    if args.resync_seconds < 1:
        raise ConfigError("--resync-seconds must be at least 1")
    if not args.dest:
        raise ConfigError("--dest is required")
    home = args.namespace or _own_namespace()
    https = parts.scheme == "https"
    return SyncSettings(
        target=ApiTarget(
            url=url,
            token_file=_existing(args.token_file, "--token-file"),
            ca_file=_existing(args.ca_file, "--ca-file") if https else None,
            namespace=None if args.all_namespaces else home,
            selector=args.selector,
        ),
        home_namespace=home,
        dest=Path(args.dest),
        resync_s=args.resync_seconds,
        once=args.once,
    )


def _existing(value: str, flag: str) -> Path | None:
    """'' means none (a `kubectl proxy` needs no token; https then trusts the system CAs)."""
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise ConfigError(
            f"{flag} {path} does not exist; outside a pod pass {flag} (or {flag} '' for none)"
        )
    return path


def _own_namespace() -> str:
    try:
        namespace = NAMESPACE_FILE.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the pod's namespace from {NAMESPACE_FILE} ({exc.strerror}); "
            "pass --namespace"
        ) from exc
    if not namespace:
        raise ConfigError(f"{NAMESPACE_FILE} is empty; pass --namespace")
    return namespace
