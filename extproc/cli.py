"""The `tokengate` command.

tokengate serve          the ext_proc sidecar (what runs beside Envoy in production)
tokengate mock-provider  the OpenAI/Anthropic-compatible simulator
tokengate dev            the whole local stack in the foreground (`make run`)
tokengate fetch-vocab    provision tiktoken vocab files for offline use
tokengate policy-sync    copy labelled policy ConfigMaps into a directory (Kubernetes)
tokengate drain-envoy    the pod's preStop hook: drain Envoy, wait for requests in flight
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from extproc.errors import ConfigError
from extproc.serve.settings import ServeSettings, add_serve_arguments, serve_settings

if TYPE_CHECKING:
    from extproc.dev.stack import LocalStack

DEMO_KEY = "tg-demo"


def _cmd_serve(args: argparse.Namespace) -> int:
    from extproc.serve.workers import run

    settings = serve_settings(args)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run(settings)


def _cmd_mock_provider(args: argparse.Namespace) -> int:
    from extproc.dev.mock_provider import KeyLimits, run
    from extproc.providers.tokens import use_vocab_dir

    limits = KeyLimits(rpm=args.key_rpm, tpm=args.key_tpm)  # ConfigError when negative
    use_vocab_dir(Path(args.vocab_dir))
    run(
        host=args.host,
        port=args.port,
        port_file=Path(args.port_file) if args.port_file else None,
        require_key=args.require_key or None,
        limits=limits,
    )
    return 0


def _cmd_fetch_vocab(args: argparse.Namespace) -> int:
    from extproc.providers.vocab import fetch

    written = fetch(Path(args.dest))
    status = f"fetched {', '.join(written)}" if written else "already present"
    sys.stdout.write(f"tiktoken vocab in {args.dest}: {status}\n")
    return 0


def _cmd_policy_sync(args: argparse.Namespace) -> int:
    from extproc.kube.policysync import run, settings_from_args

    settings = settings_from_args(args)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run(settings)


def _add_policy_sync(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Flags win over TOKENGATE_POLICY_SYNC_* variables; defaults are what a pod sees."""

    def env(name: str, default: str) -> str:
        return os.environ.get(f"TOKENGATE_POLICY_SYNC_{name}", default)

    account = "/var/run/secrets/kubernetes.io/serviceaccount"
    sync = sub.add_parser(
        "policy-sync", help="copy labelled policy ConfigMaps into a policy directory"
    )
    sync.add_argument("--api-url", default=env("API_URL", "https://kubernetes.default.svc"))
    sync.add_argument(
        "--token-file",
        default=env("TOKEN_FILE", f"{account}/token"),
        help="bearer token, re-read on every connection ('' for none, e.g. kubectl proxy)",
    )
    sync.add_argument(
        "--ca-file", default=env("CA_FILE", f"{account}/ca.crt"), help="'' for the system CAs"
    )
    sync.add_argument(
        "--namespace",
        default=env("NAMESPACE", ""),
        help="the tokengate namespace (default: the pod's own); its ConfigMaps may govern any",
    )
    sync.add_argument(
        "--all-namespaces",
        action="store_true",
        default=env("ALL_NAMESPACES", "") in ("1", "true"),
        help="watch every namespace; a ConfigMap in namespace N may only govern N",
    )
    sync.add_argument("--selector", default=env("SELECTOR", "tokengate.dev/policy=true"))
    sync.add_argument("--dest", default=env("DEST", ""), help="the policy directory to write")
    sync.add_argument(
        "--resync-seconds",
        type=int,
        default=int(env("RESYNC_SECONDS", "300")),
        help="longest a watch request stays open before a new one",
    )
    sync.add_argument("--once", action="store_true", help="list once, write, exit")
    sync.add_argument("--log-level", default=os.environ.get("TOKENGATE_LOG_LEVEL", "INFO"))
    sync.set_defaults(func=_cmd_policy_sync)


def _cmd_drain_envoy(args: argparse.Namespace) -> int:
    from extproc.kube.drain import EnvoyAdmin, drain

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    done_file = Path(args.done_file) if args.done_file else None
    drain(EnvoyAdmin(args.admin), timeout_s=args.timeout, min_wait_s=args.min_wait,
          done_file=done_file)  # fmt: skip
    return 0  # a preStop hook that fails only delays the stop; the log says what happened


def _cmd_dev(args: argparse.Namespace) -> int:
    from extproc.dev.stack import LocalStack, StackError
    from extproc.kube.envoy_config import Upstream

    ServeSettings(quota_store=args.quota_store).validate()  # the sidecar's own rule, up front
    if not Path(args.policy_dir).is_dir():
        raise ConfigError(f"--policy-dir {args.policy_dir}: not a directory")
    if args.price_table and not Path(args.price_table).is_file():
        raise ConfigError(f"--price-table {args.price_table}: not a file")
    prices = ("--price-table", str(Path(args.price_table).resolve())) if args.price_table else ()
    upstreams = {
        name: Upstream.from_url(url, what=f"--{name}-upstream") if url else None
        for name, url in (("openai", args.openai_upstream), ("anthropic", args.anthropic_upstream))
    }
    stack = LocalStack(
        policy_dir=Path(args.policy_dir),
        run_dir=Path(args.run_dir or tempfile.gettempdir()),  # the real one is set below
        vocab_dir=Path(args.vocab_dir),
        listen_port=args.port,
        admin_port=args.admin_port,
        ext_proc_port=args.ext_proc_port,
        control_port=args.control_port,
        metrics_port=args.metrics_port,
        mock_port=args.mock_port,
        openai_api_key=os.environ.get("OPENAI_API_KEY") or None,
        anthropic_api_key=os.environ.get("ANTHROPIC_API_KEY") or None,
        openai_upstream=upstreams["openai"],
        anthropic_upstream=upstreams["anthropic"],
        quota_store=args.quota_store,
        extra_serve_args=prices,
    )
    # SIGTERM stops the stack as Ctrl-C does; without this the children would outlive us.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        stack.check_ports()  # first, so that a refusal leaves nothing behind, not even a dir
        if not args.run_dir:
            stack.run_dir = Path(tempfile.mkdtemp(prefix="tokengate-dev-"))
        stack.start()
        # Stdout carries this one JSON line and nothing else, so a script can read the first
        # line of a pipe; the welcome goes to stderr (still on a human's terminal).
        sys.stdout.write(json.dumps(stack.ready_record()) + "\n")
        sys.stdout.flush()
        sys.stderr.write(_welcome(stack))
        dead = stack.watch()
        code = dead.proc.returncode
        sys.stderr.write(f"tokengate dev: {dead.name} exited ({code}):\n{dead.log_tail()}\n")
        return 1
    except StackError as exc:
        sys.stderr.write(f"tokengate dev: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for sig in previous:  # a second Ctrl-C must not cut the shutdown short
            signal.signal(sig, signal.SIG_IGN)
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _welcome(stack: LocalStack) -> str:
    explicit = {"openai": stack.openai_upstream, "anthropic": stack.anthropic_upstream}
    keys = {"openai": stack.openai_api_key, "anthropic": stack.anthropic_api_key}
    where = {}
    for name, upstream in stack.upstreams().items():
        where[name] = (
            f"{upstream.url} (--{name}-upstream)"
            if explicit[name]
            else f"{upstream.host} (its API key is set)"
            if keys[name]
            else f"the built-in mock provider ({upstream.url})"
        )
    return _WELCOME.format(
        url=stack.base_url,
        key=DEMO_KEY,
        logs=stack.run_dir,
        store=_store_label(stack.quota_store),
        **stack.ports,
        **where,
    )


def _store_label(url: str) -> str:
    """The quota store without any password (the URL may carry one)."""
    if url == "memory":
        return "in-process (memory)"
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", "")
    )


_WELCOME = """
tokengate is up. Envoy listens on {url}.
  OpenAI routes    /v1/chat/completions, … -> {openai}
  Anthropic route  /v1/messages -> {anthropic}
  quota store      {store}
  Envoy admin      http://127.0.0.1:{admin}
  ext_proc         127.0.0.1:{ext_proc}
  metrics          http://127.0.0.1:{metrics}/metrics
  control API      127.0.0.1:{control}  (token in {logs}/control-token)
  logs             {logs}

Try it (the demo gateway key is {key}):

  curl -s {url}/v1/chat/completions -H 'Authorization: Bearer {key}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Hello"}}]}}'

  python -c 'from openai import OpenAI; c = OpenAI(base_url="{url}/v1", api_key="{key}"); \\
print(c.chat.completions.create(model="gpt-4o-mini", messages=[{{"role":"user","content":"Hi"}}]))'

  python -c 'import anthropic; c = anthropic.Anthropic(base_url="{url}", api_key="{key}"); \\
print(c.messages.create(model="claude-haiku-4-5", max_tokens=64, \\
messages=[{{"role":"user","content":"Hi"}}]))'

  TOKENGATE_CONTROL_TOKEN_FILE={logs}/control-token .venv/bin/tokengate ctl \\
      --server 127.0.0.1:{control} usage demo

Ctrl-C stops everything.
"""


_DEV_HELP = """Start the mock provider (unless every provider has an upstream), the sidecar and
Envoy, in the foreground. Once all of them are ready, print exactly one line on stdout, JSON,
with every port actually bound (so any port may be 0):

  {"event": "ready", "url": "http://127.0.0.1:10000",
   "ports": {"listener": 10000, "admin": 9901, "ext_proc": 50051, "control": 50052,
             "metrics": 9464, "mock": 41877},
   "upstreams": {"openai": "http://127.0.0.1:41877", "anthropic": "http://127.0.0.1:41877"},
   "run_dir": "/tmp/tokengate-dev-…", "control_token_file": "/tmp/tokengate-dev-…/control-token"}

"mock" is there only when the mock provider runs. Nothing else goes to stdout; the text for
humans goes to stderr. Provider keys come from OPENAI_API_KEY / ANTHROPIC_API_KEY: with a key
set and no --*-upstream, that provider's traffic goes to its real API; the key is injected
into every request to that provider's upstream, including one given by --*-upstream.

Stops on Ctrl-C or SIGTERM (exit 0). Exit 1 when a port given by number is already in use
(checked before anything starts: two stacks must not share an Envoy listener) or a part of
the stack fails; exit 2 on a bad flag."""


def _add_dev(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = sub.add_parser(
        "dev",
        help="run mock provider + sidecar + Envoy in the foreground (`make run`)",
        description=_DEV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dev.add_argument("--policy-dir", default="examples/policies")
    dev.add_argument("--vocab-dir", default=".cache/tiktoken")
    dev.add_argument(
        "--quota-store",
        default="memory",
        help="'memory' (in-process, the default) or a Redis URL for the sidecar: "
        "redis://HOST:PORT, rediss://…, unix:///PATH, redis+cluster://…",
    )
    for name, title, real, key in (
        ("openai", "OpenAI", "api.openai.com", "OPENAI_API_KEY"),
        ("anthropic", "Anthropic", "api.anthropic.com", "ANTHROPIC_API_KEY"),
    ):
        dev.add_argument(
            f"--{name}-upstream",
            default="",
            metavar="URL",
            help=f"base URL for {title} routes, http or https, e.g. http://127.0.0.1:8080 "
            f"(default: {real} when {key} is set, else the built-in mock provider)",
        )
    dev.add_argument(
        "--price-table",
        default="",
        metavar="FILE",
        help="a price table (e.g. examples/prices.yaml): usd limits and the spend metrics",
    )
    dev.add_argument(
        "--run-dir", default="", help="logs, Envoy config, control token (default: a new temp dir)"
    )
    ports = dev.add_argument_group("ports on 127.0.0.1 (0 = any free one)")
    for flag, default, what in (
        ("--port", 10000, "Envoy listener"),
        ("--admin-port", 9901, "Envoy admin"),
        ("--ext-proc-port", 50051, "sidecar ext_proc (gRPC)"),
        ("--control-port", 50052, "sidecar control API (gRPC)"),
        ("--metrics-port", 9464, "sidecar Prometheus /metrics"),
        ("--mock-port", 0, "mock provider"),
    ):
        ports.add_argument(flag, type=int, default=default, help=f"{what} (default {default})")
    dev.set_defaults(func=_cmd_dev)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokengate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the ext_proc sidecar")
    add_serve_arguments(serve)
    serve.set_defaults(func=_cmd_serve)
    mock = sub.add_parser("mock-provider", help="run the mock LLM provider")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=8000)
    mock.add_argument("--port-file", default="")
    mock.add_argument(
        "--require-key", default="",
        help="answer 401 unless this key (or one of several, comma-separated) is sent",
    )  # fmt: skip
    mock.add_argument(
        "--key-rpm",
        type=int,
        default=0,
        help="requests per minute per API key, with the providers' rate-limit headers and "
        "429s (0 = unlimited)",
    )
    mock.add_argument(
        "--key-tpm",
        type=int,
        default=0,
        help="tokens per minute per API key: prompt + completion cap (0 = unlimited)",
    )
    mock.add_argument(
        "--vocab-dir", default=os.environ.get("TOKENGATE_VOCAB_DIR", ".cache/tiktoken")
    )
    mock.set_defaults(func=_cmd_mock_provider)
    _add_dev(sub)
    sub.add_parser("ctl", help="operate a running gateway (see `tokengate ctl --help`)")
    vocab = sub.add_parser("fetch-vocab", help="provision tiktoken vocab files")
    vocab.add_argument("--dest", default=".cache/tiktoken")
    vocab.set_defaults(func=_cmd_fetch_vocab)
    _add_policy_sync(sub)
    drain = sub.add_parser("drain-envoy", help="preStop hook: drain Envoy, wait for requests")
    drain.add_argument("--admin", default="127.0.0.1:9901", help="Envoy admin HOST:PORT")
    drain.add_argument("--timeout", type=float, default=300.0, help="seconds to wait at most")
    drain.add_argument(
        "--min-wait", type=float, default=5.0, help="seconds to wait at least (endpoint removal)"
    )
    drain.add_argument("--done-file", default="", help="touched when done (Envoy's hook waits)")
    drain.set_defaults(func=_cmd_drain_envoy)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ctl"]:
        from extproc.ctl.main import main as ctl_main

        return ctl_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        sys.stderr.write(f"tokengate: {exc}\n")
        return 2
    return code
