"""A stable address in front of whichever Redis node is the primary, as a Kubernetes Service
is: the client keeps one URL, `switch()` points new connections at another node, and
connections already open stay with the node they were opened to (as established TCP
connections through a Service do). So after a failover the client's pooled connections
still reach the demoted node, which answers writes with READONLY, and only a reconnect
reaches the new primary.

It also counts what proves that path ran: connections opened to each node, and replies
carrying READONLY passed back to the client.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path


class SwitchingProxy:
    def __init__(self, target: Path, directory: Path) -> None:
        self.socket = directory / "service.sock"
        self._target = target
        self._lock = threading.Lock()
        self._connections: Counter[Path] = Counter()
        self._readonly_replies = 0
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def switch(self, target: Path) -> None:
        with self._lock:
            self._target = target

    def connections(self, target: Path) -> int:
        """Connections opened to `target` so far."""
        with self._lock:
            return self._connections[target]

    @property
    def readonly_replies(self) -> int:
        with self._lock:
            return self._readonly_replies

    def start(self) -> SwitchingProxy:
        self.socket.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(self.socket))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for sock in self._open:
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            with self._lock:
                target = self._target
                self._connections[target] += 1
            server = socket.socket(socket.AF_UNIX)
            try:
                server.connect(str(target))
            except OSError:
                client.close()
                server.close()
                continue
            with self._lock:
                self._open += [client, server]
            threading.Thread(target=_pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(target=_pipe, args=(server, client, self._count), daemon=True).start()

    def _count(self, replies: bytes) -> None:
        if found := replies.count(_READONLY):
            with self._lock:
                self._readonly_replies += found


_READONLY = b"READONLY"


def _pipe(
    source: socket.socket, sink: socket.socket, watch: Callable[[bytes], None] | None
) -> None:
    tail = b""
    while data := _recv(source):
        if watch is not None:
            # a reply may be split across reads: the seam is looked at once, a whole
            # marker never twice (the tail kept is one byte shorter than the marker)
            watch(tail + data)
            tail = data[-(len(_READONLY) - 1) :]
        try:
            sink.sendall(data)
        except OSError:
            break
    sink.close()  # one side went away: so does the other, as in life


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""
