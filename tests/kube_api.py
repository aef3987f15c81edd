"""A fake Kubernetes API server for ConfigMaps (LIST and WATCH), for policy-sync's tests:
the real protocol shapes (resourceVersions, label selectors, chunked watch streams, 410
compaction, bearer tokens, 403) without a cluster. It stands in for the API server only;
everything of ours that talks to it is real."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

EXPIRED = {
    "type": "ERROR",
    "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"},
}


@dataclass(frozen=True)
class Seen:
    path: str
    query: dict[str, str]
    auth: str | None
    status: int


class FakeApi:
    """ConfigMaps only: LIST and WATCH with label selectors, resourceVersions and history,
    compaction, bearer tokens, 403, and an outage switch."""

    def __init__(self, *, tokens: set[str]) -> None:
        self.tokens = tokens
        self.down_status: int | None = None  # answer every request with this status
        self.forbidden = False
        self.watch_statuses: list[int] = []  # the next watch requests get these statuses
        self.requests: list[Seen] = []
        self._cond = threading.Condition()
        self._rv = 100
        self._oldest = 0  # a watch from before this resourceVersion gets 410
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._history: list[tuple[int, dict[str, Any]]] = []
        self._epoch = 0  # bumped to end every open watch stream
        self._closed = False
        handler = type("Handler", (_Handler,), {"api": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.01,), daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- what a test does to the cluster ---

    def put(
        self, namespace: str, name: str, data: dict[str, str], *, labelled: bool = True
    ) -> None:
        with self._cond:
            self._rv += 1
            kind = "MODIFIED" if (namespace, name) in self._objects else "ADDED"
            obj = {
                "metadata": {
                    "namespace": namespace,
                    "name": name,
                    "resourceVersion": str(self._rv),
                    "labels": {"tokengate.dev/policy": "true"} if labelled else {"other": "x"},
                },
                "data": data,
            }
            self._objects[(namespace, name)] = obj
            self._record(kind, obj)

    def delete(self, namespace: str, name: str) -> None:
        with self._cond:
            self._rv += 1
            obj = self._objects.pop((namespace, name))
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._record("DELETED", obj)

    def bookmark(self) -> str:
        with self._cond:
            self._rv += 1
            self._record("BOOKMARK", {"metadata": {"resourceVersion": str(self._rv)}})
            return str(self._rv)

    def change_unseen(self, namespace: str, name: str, data: dict[str, str]) -> None:
        """A change whose event is compacted away before any watch sees it: open watches get
        ERROR 410, and only a new LIST can reveal the change."""
        with self._cond:
            self.put(namespace, name, data)
            self._history.clear()
            self._rv += 1
            self._oldest = self._rv
            self._cond.notify_all()

    def end_streams(self) -> None:
        with self._cond:
            self._epoch += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def seen(self, *, watch: bool | None = None) -> list[Seen]:
        with self._cond:
            seen = list(self.requests)
        if watch is None:
            return seen
        return [s for s in seen if (s.query.get("watch") == "1") == watch]

    # --- the server side ---

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        event = {"type": kind, "object": json.loads(json.dumps(obj))}
        self._history.append((self._rv, event))
        self._cond.notify_all()

    def _matches(self, obj: dict[str, Any], namespace: str | None, selector: str) -> bool:
        meta = obj["metadata"]
        if namespace is not None and meta.get("namespace", namespace) != namespace:
            return False
        labels = meta.get("labels")
        if labels is None:  # a bookmark
            return True
        terms = [term.split("=", 1) for term in selector.split(",") if term]
        return all(labels.get(k) == v for k, v in terms)

    def list_body(self, namespace: str | None, selector: str) -> dict[str, Any]:
        with self._cond:
            items = [o for o in self._objects.values() if self._matches(o, namespace, selector)]
            meta = {"resourceVersion": str(self._rv)}
            return {
                "kind": "ConfigMapList",
                "metadata": meta,
                "items": json.loads(json.dumps(items)),
            }

    def _stream_ready(self, position: int, epoch: int) -> bool:
        return (
            self._closed
            or self._epoch != epoch
            or position < self._oldest
            or any(rv > position for rv, _ in self._history)
        )

    def events(
        self, namespace: str | None, selector: str, start: int, epoch: int
    ) -> Iterator[dict[str, Any]]:
        """Events after `start`, as they happen, until the stream is ended (events already
        recorded are sent first) or its position is compacted away (ERROR 410)."""
        position = start
        while True:
            with self._cond:
                self._cond.wait_for(functools.partial(self._stream_ready, position, epoch))
                if self._closed:
                    return
                if position < self._oldest:
                    yield EXPIRED
                    return
                pending = [e for rv, e in self._history if rv > position]
                position = max([position, *(rv for rv, _ in self._history)])
                ended = self._epoch != epoch
            for event in pending:
                if self._matches(event["object"], namespace, selector):
                    yield event
            if ended:
                return


class _Handler(BaseHTTPRequestHandler):
    api: ClassVar[FakeApi]
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        api = self.api
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        status = self._status_for(url.path, query)
        with api._cond:
            api.requests.append(Seen(url.path, query, self.headers.get("Authorization"), status))
            epoch = api._epoch  # end_streams() from now on ends this one
        if status != 200:
            return self._send_status(status)
        namespace = None if url.path == "/api/v1/configmaps" else url.path.split("/")[4]
        selector = query.get("labelSelector", "")
        if query.get("watch") != "1":
            body = json.dumps(api.list_body(namespace, selector)).encode()
            return self._send(200, body)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in api.events(namespace, selector, int(query["resourceVersion"]), epoch):
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client went away

    def _status_for(self, path: str, query: dict[str, str]) -> int:
        api = self.api
        if api.down_status is not None:
            return api.down_status
        if self.headers.get("Authorization") not in {f"Bearer {t}" for t in api.tokens}:
            return 401
        if api.forbidden:
            return 403
        if path != "/api/v1/configmaps" and not (
            path.startswith("/api/v1/namespaces/") and path.endswith("/configmaps")
        ):
            return 404
        if query.get("watch") == "1" and api.watch_statuses:
            return api.watch_statuses.pop(0)
        return 200

    def _send_status(self, code: int) -> None:
        message = {
            403: 'configmaps is forbidden: User "system:serviceaccount:tokengate:tg" cannot '
            'list resource "configmaps" in API group "" in the namespace "tokengate"',
        }.get(code, f"status {code}")
        body = {"kind": "Status", "status": "Failure", "code": code, "message": message}
        self._send(code, json.dumps(body).encode())

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass
