"""A minimal Kubernetes API client for ConfigMaps: LIST and WATCH, nothing else.

Standard library only, so the policy-sync container needs nothing beyond tokengate itself.
Each request opens its own connection and reads the service-account token again, because
projected tokens rotate (about hourly) and a watch may outlive one. `close` may be called
from another thread (a signal handler, a test) to end a watch that is blocked reading.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from extproc.errors import ConfigError, TokengateError
from extproc.kube.policysync._content import ConfigMap

MAX_LIST_BYTES = 64 << 20
MAX_EVENT_BYTES = 16 << 20  # one watch event: a 1 MiB ConfigMap, JSON-escaped, fits easily
_READ_MARGIN_S = 30.0  # beyond the watch's own timeout, before a silent connection is dead


class KubeApiError(TokengateError):
    """The API server could not be reached, refused us, or answered something unusable."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ResourceExpired(KubeApiError):
    """410 Gone: the resourceVersion we watch from was compacted away; list again."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiTarget:
    """Where the API server is and how to talk to it. `namespace` None: cluster-wide."""

    url: str
    token_file: Path | None
    ca_file: Path | None
    namespace: str | None
    selector: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Listing:
    items: list[ConfigMap]
    resource_version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchEvent:
    """ADDED, MODIFIED, DELETED (with the ConfigMap) or BOOKMARK (without)."""

    type: str
    resource_version: str
    configmap: ConfigMap | None


class KubeClient:
    def __init__(self, *, target: ApiTarget, request_timeout_s: float = 30.0) -> None:
        """`settings_from_args` refuses a bad URL with the flag's name; this repeats the check
        for callers that build an `ApiTarget` themselves, in the same class of error."""
        parts = urlsplit(target.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"API URL must be http(s)://host[:port], got {target.url!r}")
        self._target = target
        self._parts = parts
        self._timeout_s = request_timeout_s
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._closed = False

    def list_configmaps(self) -> Listing:
        """Every matching ConfigMap and the resourceVersion to watch from."""
        query = {"labelSelector": self._target.selector}
        with self._request("list", query, self._timeout_s) as response:
            body = response.read(MAX_LIST_BYTES + 1)
        if len(body) > MAX_LIST_BYTES:
            raise KubeApiError(f"ConfigMap list is larger than {MAX_LIST_BYTES} bytes")
        document = _json_object(body, "list response")
        items = document.get("items") or []
        if not isinstance(items, list):
            raise KubeApiError("list response: items is not a list")
        return Listing(
            items=[_configmap(item) for item in items],
            resource_version=_resource_version(document),
        )

    def watch_configmaps(self, resource_version: str, *, timeout_s: int) -> Iterator[WatchEvent]:
        """Events after `resource_version` until the server ends the stream (normally after
        `timeout_s`). Raises ResourceExpired on 410, KubeApiError on anything else wrong."""
        query = {
            "labelSelector": self._target.selector,
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_s),
        }
        with self._request("watch", query, timeout_s + _READ_MARGIN_S) as response:
            while line := self._readline(response):
                if line.strip():
                    yield _event(_json_object(line, "watch event"))

    def close(self) -> None:
        """End the current request and refuse new ones; safe from any thread."""
        with self._lock:
            self._closed = True
            sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in recv

    def _readline(self, response: http.client.HTTPResponse) -> bytes:
        try:
            line = response.readline(MAX_EVENT_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from exc
        if len(line) > MAX_EVENT_BYTES:
            raise KubeApiError(f"watch event larger than {MAX_EVENT_BYTES} bytes")
        return line

    @contextlib.contextmanager
    def _request(
        self, verb: str, query: dict[str, str], timeout_s: float
    ) -> Iterator[http.client.HTTPResponse]:
        """One GET on its own connection, closed on exit; a non-200 answer raises."""
        headers = {"Accept": "application/json", "User-Agent": "tokengate-policy-sync"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn = self._connect(timeout_s)
        try:
            try:
                conn.request("GET", f"{self._path()}?{urlencode(query)}", headers=headers)
                response = conn.getresponse()
                body = response.read(64 << 10) if response.status != 200 else b""
            except (OSError, http.client.HTTPException) as exc:
                raise self._unreachable(exc) from exc
            if response.status != 200:
                raise _status_error(response.status, body, verb=verb, target=self._target)
            yield response
        finally:
            conn.close()

    def _connect(self, timeout_s: float) -> http.client.HTTPConnection:
        """Connected before it is registered, under the lock `close` takes: either `close`
        sees this socket and shuts it, or we see `close` was called and give up."""
        host, port = self._parts.hostname or "", self._parts.port
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        try:
            if self._parts.scheme == "https":
                cafile = str(self._target.ca_file) if self._target.ca_file else None
                context = ssl.create_default_context(cafile=cafile)  # re-read: CAs rotate too
                conn = http.client.HTTPSConnection(host, port, timeout=timeout_s, context=context)
            conn.connect()
        except OSError as exc:  # refused, unreachable, TLS handshake, unreadable CA file
            conn.close()
            raise self._unreachable(exc) from exc
        with self._lock:
            if self._closed:
                conn.close()
                raise KubeApiError("client closed")
            self._conn = conn
        return conn

    def _path(self) -> str:
        base = self._parts.path.rstrip("/")
        ns = self._target.namespace
        return f"{base}/api/v1/namespaces/{ns}/configmaps" if ns else f"{base}/api/v1/configmaps"

    def _token(self) -> str:
        """Read on every request: the kubelet rotates projected tokens in place."""
        path = self._target.token_file
        if path is None:
            return ""
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise KubeApiError(f"cannot read the token file {path}: {exc}") from exc
        if not token:
            raise KubeApiError(f"the token file {path} is empty")
        return token

    def _unreachable(self, exc: BaseException) -> KubeApiError:
        return KubeApiError(f"cannot reach the API server at {self._target.url}: {exc}")


def _status_error(status: int, body: bytes, *, verb: str, target: ApiTarget) -> KubeApiError:
    """Say what to fix: the token for 401, the missing RBAC rule for 403."""
    message = _status_message(body)
    if status == 410:
        return ResourceExpired(f"resourceVersion expired (410 Gone): {message}", status=status)
    if status == 401:
        where = target.token_file or "no token file"
        text = f"the API server rejected the token from {where} (401 Unauthorized): {message}"
        return KubeApiError(text, status=status)
    if status == 403:
        if target.namespace:
            scope = f"in namespace {target.namespace} (a Role and RoleBinding there)"
        else:
            scope = "cluster-wide (a ClusterRole and ClusterRoleBinding, for --all-namespaces)"
        text = (
            f"forbidden (403): the service account may not {verb} configmaps; grant the "
            f"verbs list and watch on configmaps {scope}: {message}"
        )
        return KubeApiError(text, status=status)
    text = f"API server answered {status} to {verb} configmaps: {message}"
    return KubeApiError(text, status=status)


def _status_message(body: bytes) -> str:
    """A Kubernetes Status' `message`, else the start of the body."""
    try:
        status = json.loads(body)
    except ValueError:
        status = None
    text = _message_of(status) or body.decode("utf-8", "replace").strip()
    return text[:300] or "(no message)"


def _message_of(status: object) -> str:
    message = status.get("message") if isinstance(status, dict) else None
    return message if isinstance(message, str) else ""


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise KubeApiError(f"{what} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise KubeApiError(f"{what} is not a JSON object")
    return value


def _event(raw: dict[str, Any]) -> WatchEvent:
    kind, obj = raw.get("type"), raw.get("object")
    if not isinstance(obj, dict):
        raise KubeApiError(f"watch event {kind!r} has no object")
    if kind == "ERROR":
        code = obj.get("code")
        message = f"watch error {code}: {_message_of(obj)[:300] or '(no message)'}"
        if code == 410:
            raise ResourceExpired(message, status=410)
        raise KubeApiError(message, status=code if isinstance(code, int) else None)
    if kind == "BOOKMARK":
        return WatchEvent(type=kind, resource_version=_resource_version(obj), configmap=None)
    if kind in ("ADDED", "MODIFIED", "DELETED"):
        configmap = _configmap(obj)
        return WatchEvent(
            type=kind, resource_version=configmap.resource_version, configmap=configmap
        )
    raise KubeApiError(f"unknown watch event type {kind!r}")


def _resource_version(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata")
    version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
    if not isinstance(version, str) or not version:
        raise KubeApiError("object without metadata.resourceVersion")
    return version


def _configmap(obj: object) -> ConfigMap:
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(obj, dict) or not isinstance(metadata, dict):
        raise KubeApiError("ConfigMap without metadata")
    namespace, name = metadata.get("namespace"), metadata.get("name")
    data = obj.get("data") or {}
    if not isinstance(namespace, str) or not isinstance(name, str):
        raise KubeApiError("ConfigMap without metadata.namespace and metadata.name")
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise KubeApiError(f"ConfigMap {namespace}/{name}: data is not a map of strings")
    return ConfigMap(
        namespace=namespace, name=name, resource_version=_resource_version(obj), data=data
    )
