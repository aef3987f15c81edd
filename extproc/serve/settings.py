"""Typed settings for `tokengate serve`, in one place. Flags win over environment variables
(`TOKENGATE_*`); every default is the local-development value from DESIGN.md."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from extproc.backends.health import HealthPolicy
from extproc.errors import ConfigError
from extproc.gate.credentials import CredentialSource


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, what: str) -> Address:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"{what}: expected HOST:PORT, got {text!r}")
        return cls(host.strip("[]") or "127.0.0.1", int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_STORE_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeSettings:
    ext_proc: Address = Address("127.0.0.1", 50051)
    metrics: Address | None = Address("127.0.0.1", 9464)
    policy_dirs: tuple[Path, ...] = (Path("examples/policies"),)
    vocab_dir: Path = Path(".cache/tiktoken")
    quota_store: str = "memory"
    # Redis AUTH password (a mounted Secret), kept out of the URL and so out of `ps`.
    quota_store_password_file: Path | None = None
    workers: int = 1
    max_body_bytes: int = 4 * 1024 * 1024
    grace_s: float = 10.0
    tokenizer_threads: int = 2
    # Envoy cluster name -> where its provider key comes from.
    credentials: dict[str, CredentialSource] = field(default_factory=dict)
    ready_file: Path | None = None
    log_level: str = "INFO"
    # Quota store: how long an unsettled reservation lives, how long a Redis call may take,
    # how often a store that failed is probed.
    lease_ttl_s: float = 600.0
    # How long a sidecar process may go without renewing its liveness in the shared store
    # before the others release its concurrency leases (charging its reservations).
    instance_ttl_s: float = 10.0
    store_timeout_s: float = 0.25
    probe_interval_s: float = 1.0
    # Quota-store calls in flight per worker (its Redis connections); more wait for a slot.
    store_connections: int = 32
    # Worker supervision: a worker restarted more than this within the window is a crash
    # loop (health NOT_SERVING, exit 3, so that the kubelet restarts the pod).
    max_restarts: int = 5
    restart_window_s: float = 60.0
    price_table: Path | None = None
    # Set for each worker of a multi-worker server: they share the port (SO_REUSEPORT).
    reuse_port: bool = False
    # The control API: its own port, and the bearer token file (no file: no control API).
    control: Address | None = Address("127.0.0.1", 50052)
    control_token_file: Path | None = None
    # gRPC health only, for the kubelet's grpc probe: the ext_proc port stays on loopback.
    health: Address | None = None
    # How often the policy directory, credential files and overrides are checked.
    reload_interval_s: float = 1.0
    # The workers' event loop: uvloop (measured faster: docs/performance.md) or asyncio.
    event_loop: str = "uvloop"
    # Model routes' circuit breaker: failed attempts in a row that open it, how long it
    # stays open before one probe, and when an unanswered probe frees its slot.
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    breaker_probe_ttl_s: float = 60.0
    # Model routes: a streamed answer with no response headers within this fails over.
    first_byte_timeout_s: float = 30.0

    @property
    def health_policy(self) -> HealthPolicy:
        return HealthPolicy(
            failures=self.breaker_failures,
            cooldown_s=self.breaker_cooldown_s,
            probe_ttl_s=self.breaker_probe_ttl_s,
        )

    @property
    def shared_store(self) -> bool:
        return self.quota_store != "memory"

    def quota_store_password(self) -> str | None:
        if self.quota_store_password_file is None:
            return None
        try:
            return self.quota_store_password_file.read_text().strip() or None
        except OSError as exc:
            raise ConfigError(
                f"--quota-store-password-file {self.quota_store_password_file}: {exc.strerror}"
            ) from exc

    def validate(self) -> None:
        if self.workers < 1:
            raise ConfigError("--workers must be at least 1")
        if self.workers > 1 and self.quota_store == "memory":
            raise ConfigError(
                "--workers > 1 needs a shared quota store: the in-process store would give "
                "every worker its own budget. Set --quota-store redis://… or use --workers 1."
            )
        if self.shared_store and not self.quota_store.startswith(_STORE_SCHEMES):
            raise ConfigError(
                f"--quota-store must be 'memory' or a URL ({', '.join(_STORE_SCHEMES)}), "
                f"got {self.quota_store!r}"
            )
        if min(self.lease_ttl_s, self.instance_ttl_s, self.store_timeout_s,
               self.probe_interval_s) <= 0:  # fmt: skip
            raise ConfigError(
                "--lease-ttl, --instance-ttl, --store-timeout and --probe-interval must be > 0"
            )
        if self.store_connections < 1:
            raise ConfigError("--store-connections must be at least 1")
        if self.max_restarts < 0 or self.restart_window_s <= 0:
            raise ConfigError("--max-restarts must be >= 0 and --restart-window > 0")
        if self.max_body_bytes < 1024:
            raise ConfigError("--max-body-bytes must be at least 1024")
        if (
            self.breaker_failures < 1
            or min(self.breaker_cooldown_s, self.breaker_probe_ttl_s, self.first_byte_timeout_s)
            <= 0
        ):
            raise ConfigError(
                "--breaker-failures must be at least 1, --breaker-cooldown, "
                "--breaker-probe-ttl and --first-byte-timeout > 0"
            )
        if self.event_loop not in EVENT_LOOPS:
            raise ConfigError(f"--event-loop must be one of {', '.join(EVENT_LOOPS)}")


EVENT_LOOPS = ("uvloop", "asyncio")


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TOKENGATE_{name}", default)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        default=_env("LISTEN", "127.0.0.1:50051"),
        help="ext_proc gRPC address (TOKENGATE_LISTEN)",
    )
    parser.add_argument(
        "--metrics-listen",
        default=_env("METRICS_LISTEN", "127.0.0.1:9464"),
        help="Prometheus /metrics address, 'off' to disable",
    )
    parser.add_argument(
        "--policy-dir",
        action="append",
        help="directory of policy files; repeat for several (default examples/policies, "
        "TOKENGATE_POLICY_DIR, colon-separated)",
    )
    parser.add_argument("--vocab-dir", default=_env("VOCAB_DIR", ".cache/tiktoken"))
    parser.add_argument("--quota-store", default=_env("QUOTA_STORE", "memory"))
    parser.add_argument(
        "--quota-store-password-file",
        default=_env("QUOTA_STORE_PASSWORD_FILE", ""),
        help="file holding the Redis password (a mounted Secret)",
    )
    parser.add_argument("--workers", type=int, default=int(_env("WORKERS", "1")))
    parser.add_argument(
        "--max-body-bytes", type=int, default=int(_env("MAX_BODY_BYTES", str(4 * 1024 * 1024)))
    )
    parser.add_argument(
        "--openai-api-key-file",
        default=_env("OPENAI_API_KEY_FILE", ""),
        help="file holding the OpenAI key (a mounted Secret); "
        "else the OPENAI_API_KEY environment variable",
    )
    parser.add_argument(
        "--anthropic-api-key-file",
        default=_env("ANTHROPIC_API_KEY_FILE", ""),
        help="file holding the Anthropic key; else the ANTHROPIC_API_KEY environment variable",
    )
    parser.add_argument(
        "--ready-file", default="", help="write the bound ports here as JSON once serving"
    )
    parser.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--max-restarts", type=int, default=int(_env("MAX_RESTARTS", "5")),
        help="restarts of one worker within --restart-window before the server gives up "
        "(health NOT_SERVING, exit 3) so that the kubelet restarts the pod",
    )  # fmt: skip
    parser.add_argument(
        "--restart-window", type=float, default=float(_env("RESTART_WINDOW", "60")),
        help="seconds over which --max-restarts is counted",
    )  # fmt: skip
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=float(_env("LEASE_TTL", "600")),
        help="seconds before an unsettled reservation ends (its lease released, its cost "
        "kept): the last resort; see --instance-ttl",
    )
    parser.add_argument(
        "--instance-ttl",
        type=float,
        default=float(_env("INSTANCE_TTL", "10")),
        help="seconds a sidecar process may miss renewing its liveness in the shared store "
        "before any other releases its concurrency leases (renewed every third of it)",
    )
    parser.add_argument(
        "--store-timeout",
        type=float,
        default=float(_env("STORE_TIMEOUT", "0.25")),
        help="seconds a quota-store call may take before the fail mode applies; time this "
        "process's event loop was starved does not count (up to 8x this in all)",
    )
    parser.add_argument(
        "--store-connections",
        type=int,
        default=int(_env("STORE_CONNECTIONS", "32")),
        help="quota-store calls in flight per worker (Redis connections); more wait for a slot",
    )
    parser.add_argument(
        "--probe-interval",
        type=float,
        default=float(_env("PROBE_INTERVAL", "1")),
        help="seconds between probes of a quota store that failed",
    )
    parser.add_argument(
        "--control-listen",
        default=_env("CONTROL_LISTEN", "127.0.0.1:50052"),
        help="control API address, 'off' to disable",
    )
    parser.add_argument(
        "--health-listen",
        default=_env("HEALTH_LISTEN", "off"),
        help="address serving only gRPC health (for Kubernetes grpc probes), 'off' by default",
    )
    parser.add_argument(
        "--control-token-file",
        default=_env("CONTROL_TOKEN_FILE", ""),
        help="bearer token of the control API (a mounted Secret); without it no control API",
    )
    parser.add_argument(
        "--reload-interval",
        type=float,
        default=float(_env("RELOAD_INTERVAL", "1")),
        help="seconds between checks of policies, key files and overrides",
    )
    parser.add_argument(
        "--event-loop",
        default=_env("EVENT_LOOP", "uvloop"),
        help="the workers' event loop: uvloop (default) or asyncio (TOKENGATE_EVENT_LOOP)",
    )
    parser.add_argument(
        "--breaker-failures", type=int, default=int(_env("BREAKER_FAILURES", "5")),
        help="model routes: failed attempts in a row (5xx, 429, no answer) that open a "
        "backend's circuit breaker, fleet-wide",
    )  # fmt: skip
    parser.add_argument(
        "--breaker-cooldown", type=float, default=float(_env("BREAKER_COOLDOWN", "30")),
        help="seconds an open breaker skips its backend before one request probes it",
    )  # fmt: skip
    parser.add_argument(
        "--breaker-probe-ttl", type=float, default=float(_env("BREAKER_PROBE_TTL", "60")),
        help="seconds after which a probe that never reported frees the probe slot",
    )  # fmt: skip
    parser.add_argument(
        "--first-byte-timeout", type=float, default=float(_env("FIRST_BYTE_TIMEOUT", "30")),
        help="model routes: seconds a streamed answer may take to its response headers "
        "before the next backend is tried",
    )  # fmt: skip
    parser.add_argument(
        "--price-table",
        default=_env("PRICE_TABLE", ""),
        help="YAML price table (needed by usd limits)",
    )


def serve_settings(args: argparse.Namespace) -> ServeSettings:
    metrics = None
    if args.metrics_listen != "off":
        metrics = Address.parse(args.metrics_listen, what="--metrics-listen")
    openai_file = Path(args.openai_api_key_file) if args.openai_api_key_file else None
    anthropic_file = Path(args.anthropic_api_key_file) if args.anthropic_api_key_file else None
    settings = ServeSettings(
        ext_proc=Address.parse(args.listen, what="--listen"),
        metrics=metrics,
        policy_dirs=tuple(
            Path(p) for p in args.policy_dir or _env("POLICY_DIR", "examples/policies").split(":")
        ),
        vocab_dir=Path(args.vocab_dir),
        quota_store=args.quota_store,
        quota_store_password_file=Path(args.quota_store_password_file)
        if args.quota_store_password_file
        else None,
        workers=args.workers,
        max_body_bytes=args.max_body_bytes,
        credentials={
            "openai": CredentialSource(env_var="OPENAI_API_KEY", file=openai_file),
            "anthropic": CredentialSource(env_var="ANTHROPIC_API_KEY", file=anthropic_file),
        },
        ready_file=Path(args.ready_file) if args.ready_file else None,
        log_level=args.log_level.upper(),
        lease_ttl_s=args.lease_ttl,
        max_restarts=args.max_restarts,
        restart_window_s=args.restart_window,
        instance_ttl_s=args.instance_ttl,
        store_timeout_s=args.store_timeout,
        store_connections=args.store_connections,
        probe_interval_s=args.probe_interval,
        price_table=Path(args.price_table) if args.price_table else None,
        control=None
        if args.control_listen == "off"
        else Address.parse(args.control_listen, what="--control-listen"),
        control_token_file=Path(args.control_token_file) if args.control_token_file else None,
        health=None
        if args.health_listen == "off"
        else Address.parse(args.health_listen, what="--health-listen"),
        reload_interval_s=args.reload_interval,
        event_loop=args.event_loop,
        breaker_failures=args.breaker_failures,
        breaker_cooldown_s=args.breaker_cooldown,
        breaker_probe_ttl_s=args.breaker_probe_ttl,
        first_byte_timeout_s=args.first_byte_timeout,
    )
    settings.validate()
    return settings
