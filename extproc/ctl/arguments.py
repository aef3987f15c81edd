"""The command line of `tokengate ctl`: global options, commands and their arguments.

Value converters (`extproc.ctl.values.parse_*`) raise `argparse.ArgumentTypeError`, so a bad
value is argparse's own usage error: its message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from extproc.ctl import commands, values

DEFAULT_SERVER = "127.0.0.1:50052"
EVENT_KINDS = (
    "refusal", "cut", "store_down", "store_up", "reload", "reload_error", "override", "reset",
    "backend_opened", "backend_reopened", "backend_closed", "key_expiring", "key_disabled",
    "key_budget_spent", "shed",
)  # fmt: skip


def _global_options(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """The same options on the top parser (real defaults) and on every command (SUPPRESS,
    so that `ctl usage x --output json` and `ctl --output json usage x` both work)."""
    parser.add_argument(
        "--server", type=values.parse_nonblank, default=defaults["server"], metavar="HOST:PORT",
        help=f"control API address (env TOKENGATE_CONTROL_SERVER, default {DEFAULT_SERVER})",
    )  # fmt: skip
    parser.add_argument(
        "--token-file", default=defaults["token_file"], metavar="PATH",
        help="file holding the bearer token (env TOKENGATE_CONTROL_TOKEN_FILE; "
        "else the token itself from env TOKENGATE_CONTROL_TOKEN)",
    )  # fmt: skip
    parser.add_argument(
        "--output", "-o", choices=("table", "json"), default=defaults["output"],
        help="table (default) or json",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=values.parse_seconds, default=defaults["timeout"],
        metavar="SECONDS", help="deadline of each call (default 10)",
    )  # fmt: skip


def _caller_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("namespace", type=values.parse_nonblank, metavar="NAMESPACE")
    parser.add_argument("--key", default="", metavar="NAME", help="one gateway key (ApiKey name)")


def build_parser(*, description: str) -> argparse.ArgumentParser:
    """`description` is the help text (the manual in `extproc.ctl.main`'s docstring). Each
    command sets `run`: the function of `extproc.ctl.commands` that carries it out."""
    top_defaults = {
        "server": os.environ.get("TOKENGATE_CONTROL_SERVER") or DEFAULT_SERVER,
        "token_file": os.environ.get("TOKENGATE_CONTROL_TOKEN_FILE") or "",
        "output": "table",
        "timeout": 10.0,
    }
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, dict.fromkeys(top_defaults, argparse.SUPPRESS))
    parser = argparse.ArgumentParser(
        prog="tokengate ctl", description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _global_options(parser, top_defaults)
    group = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        group: Any, name: str, run: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=help_text)
        sub.set_defaults(run=run)
        return sub

    usage = command(group, "usage", commands.usage, "usage of a namespace or key, per limit")
    _caller_arguments(usage)
    top = command(group, "top", commands.top, "the callers that spent the most")
    top.add_argument("--window", choices=("1m", "1h", "1d"), default="1h")
    top.add_argument("--measure", choices=("tokens", "requests", "usd"), default="tokens")
    top.add_argument("--count", type=values.parse_count, default=10, metavar="N")
    policy = group.add_parser("policy", help="show or validate policies")
    policies = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    command(policies, "show", commands.policy_show, "the policy snapshot in force")
    validate = command(policies, "validate", commands.policy_validate, "check policy files")
    validate.add_argument("files", nargs="+", metavar="FILE", help="policy file ('-': stdin)")
    validate.add_argument(
        "--remote", action="store_true", help="ask the server instead of validating locally"
    )
    override = command(group, "override", commands.override, "block or give extra quota")
    _caller_arguments(override)
    what = override.add_mutually_exclusive_group(required=True)
    what.add_argument("--block", action="store_true", help="refuse every request")
    what.add_argument(
        "--extra", type=values.parse_extra, metavar="LIMIT=AMOUNT",
        help="raise one limit by AMOUNT (its unit; '$2.50' for usd limits)",
    )  # fmt: skip
    override.add_argument(
        "--ttl", type=values.parse_duration, required=True, metavar="DURATION",
        help="how long it lasts: 30s, 15m, 2h, 1d",
    )  # fmt: skip
    override.add_argument("--reason", type=values.parse_nonblank, required=True, metavar="TEXT")
    reset = command(group, "reset", commands.reset, "reset a caller's counters")
    _caller_arguments(reset)
    reset.add_argument("--reason", type=values.parse_nonblank, required=True, metavar="TEXT")
    command(group, "backends", commands.backends, "model routes' backends: breaker, headroom")
    command(group, "queue", commands.queue, "shared capacities: who waits, by class")
    events = command(group, "events", commands.events, "live enforcement events")
    events.add_argument(
        "--kind", action="append", choices=EVENT_KINDS, default=[],
        help="only these kinds (repeatable; default: all)",
    )  # fmt: skip
    events.add_argument(
        "--count", type=values.parse_count, default=0, metavar="N", help="stop after N"
    )
    return parser
