"""What the test proxies in front of a real redis-server share: a Unix-socket listener that
pairs every accepted client with a fresh connection to the node `upstream()` names, hands the
pair to `connected()` (which starts the forwarding threads), and closes all of it on `stop()`.
"""

from __future__ import annotations

import abc
import socket
import threading
from pathlib import Path
from typing import Self


class UnixProxy(abc.ABC):
    def __init__(self, socket_path: Path, *, backlog: int) -> None:
        self.socket = socket_path
        self._backlog = backlog
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> Self:
        self.socket.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(self.socket))
        listener.listen(self._backlog)
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

    @abc.abstractmethod
    def upstream(self) -> Path:
        """The node a new connection goes to."""

    @abc.abstractmethod
    def connected(self, client: socket.socket, server: socket.socket) -> None:
        """Start forwarding between a client and its node."""

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            server = socket.socket(socket.AF_UNIX)
            try:
                server.connect(str(self.upstream()))
            except OSError:  # the node is gone: so is this client's connection
                client.close()
                server.close()
                continue
            with self._lock:
                self._open += [client, server]
            self.connected(client, server)


def recv(sock: socket.socket) -> bytes:
    """The next bytes, or b"" once the socket is closed or broken."""
    try:
        return sock.recv(65536)
    except OSError:
        return b""
