"""A Unix-socket proxy in front of a real redis-server that can withhold one reply.

It makes the case a frozen or killed Redis cannot: a command that Redis *ran* while its
caller never heard back (the caller timed out, or its task was cancelled). Every command
reaches Redis. After `hold_reply_to(marker)`, the first connection that sends a command
containing `marker` gets no more replies: `withheld` is set when Redis's answer to it was
kept back, which proves Redis ran it. Every other connection, including any the caller opens
later, is forwarded as usual.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from tests.unix_proxy import UnixProxy, recv


class ReplyHoldingProxy(UnixProxy):
    def __init__(self, upstream: Path, directory: Path) -> None:
        super().__init__(directory / "proxy.sock", backlog=64)
        self._upstream = upstream
        self.withheld = threading.Event()
        self._marker = b""

    def hold_reply_to(self, marker: bytes) -> None:
        self.withheld.clear()
        with self._lock:
            self._marker = marker.lower()

    def upstream(self) -> Path:
        return self._upstream

    def connected(self, client: socket.socket, server: socket.socket) -> None:
        held = threading.Event()
        for target in (self._requests, self._replies):
            threading.Thread(target=target, args=(client, server, held), daemon=True).start()

    def _requests(
        self, client: socket.socket, server: socket.socket, held: threading.Event
    ) -> None:
        tail = b""
        while data := recv(client):
            seen, tail = (tail + data).lower(), data[-64:].lower()
            with self._lock:
                if self._marker and self._marker in seen:
                    self._marker = b""
                    held.set()
            if not _send(server, data):
                break
        server.close()  # the client went away: so does its Redis connection, as in life

    def _replies(self, client: socket.socket, server: socket.socket, held: threading.Event) -> None:
        while data := recv(server):
            if held.is_set():
                self.withheld.set()
            elif not _send(client, data):
                break
        client.close()


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True
