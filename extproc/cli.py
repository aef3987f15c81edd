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
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path

from extproc.errors import ConfigError
from extproc.serve.settings import add_serve_arguments, serve_settings

DEMO_KEY = "tg-demo"


def _cmd_serve(args: argparse.Namespace) -> int:
    from extproc.serve.workers import run

    settings = serve_settings(args)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run(settings)


def _cmd_mock_provider(args: argparse.Namespace) -> int:
    from extproc.dev.mock_provider import run
    from extproc.providers.tokens import use_vocab_dir

    use_vocab_dir(Path(args.vocab_dir))
    run(
        host=args.host,
        port=args.port,
        port_file=Path(args.port_file) if args.port_file else None,
        require_key=args.require_key or None,
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
    from extproc.dev.stack import LocalStack

    run_dir = Path(tempfile.mkdtemp(prefix="tokengate-dev-"))
    stack = LocalStack(
        policy_dir=Path(args.policy_dir),
        run_dir=run_dir,
        vocab_dir=Path(args.vocab_dir),
        listen_port=args.port,
        admin_port=args.admin_port,
        ext_proc_port=args.ext_proc_port,
        metrics_port=args.metrics_port,
        openai_api_key=os.environ.get("OPENAI_API_KEY") or None,
        anthropic_api_key=os.environ.get("ANTHROPIC_API_KEY") or None,
    )
    stack.start()
    mock = "the built-in mock provider"
    sys.stdout.write(
        _WELCOME.format(
            url=stack.base_url,
            key=DEMO_KEY,
            logs=run_dir,
            **stack.ports,
            openai="api.openai.com" if stack.openai_api_key else mock,
            anthropic="api.anthropic.com" if stack.anthropic_api_key else mock,
        )
    )
    sys.stdout.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0


_WELCOME = """
tokengate is up. Envoy listens on {url}.
  OpenAI routes    /v1/chat/completions, … -> {openai}
  Anthropic route  /v1/messages -> {anthropic}
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
    mock.add_argument("--require-key", default="", help="answer 401 unless this key is sent")
    mock.add_argument(
        "--vocab-dir", default=os.environ.get("TOKENGATE_VOCAB_DIR", ".cache/tiktoken")
    )
    mock.set_defaults(func=_cmd_mock_provider)
    dev = sub.add_parser("dev", help="run mock provider + sidecar + Envoy in the foreground")
    dev.add_argument("--policy-dir", default="examples/policies")
    dev.add_argument("--vocab-dir", default=".cache/tiktoken")
    dev.add_argument("--port", type=int, default=10000)
    dev.add_argument("--admin-port", type=int, default=9901)
    dev.add_argument("--ext-proc-port", type=int, default=50051)
    dev.add_argument("--metrics-port", type=int, default=9464)
    dev.set_defaults(func=_cmd_dev)
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
