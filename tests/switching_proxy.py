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

from tests.unix_proxy import UnixProxy, recv


class SwitchingProxy(UnixProxy):
    def __init__(self, target: Path, directory: Path) -> None:
        super().__init__(directory / "service.sock", backlog=128)
        self._target = target
        self._connections: Counter[Path] = Counter()
        self._readonly_replies = 0

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

    def upstream(self) -> Path:
        with self._lock:
            self._connections[self._target] += 1
            return self._target

    def connected(self, client: socket.socket, server: socket.socket) -> None:
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
    while data := recv(source):
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
