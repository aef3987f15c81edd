"""The half of `tokengate ctl` that needs no server: what it prints (human tables, the JSON
shapes scripts read) and offline `policy validate` with the server's own loader. (The text
forms of values it reads are in `extproc.ctl.values`.)

JSON is the proto3 JSON mapping of the response with the proto's own snake_case field
names, every field present even when it holds its default value, and 64-bit integers as
JSON numbers (every amount the API carries is below 2**53). Amounts of `usd` limits are
micro-dollars in JSON, as on the wire; tables show them as dollars.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from extproc.control import control_pb2 as pb
from extproc.ctl.values import MICRO
from extproc.errors import ConfigError, PolicyError
from extproc.policy import load_directory, parse_documents
from extproc.policy.loader import MAX_FILE_BYTES

NONE = "-"


def to_json(message: Message) -> dict[str, Any]:
    """The stable JSON object of one message (see the module docstring): fields in the
    proto's order, and a sub-message that is not set (an event without a caller) printed
    with its defaults like any other field."""
    data = MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )
    ordered: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if field.message_type is None or is_map:
            ordered[field.name] = data[field.name]
        elif field.is_repeated:
            ordered[field.name] = [to_json(item) for item in value]
        else:
            ordered[field.name] = to_json(value)
    return ordered


def json_document(data: object) -> str:
    """One JSON document (commands other than `events`)."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def json_line(data: object) -> str:
    """One line of JSON Lines (`events`)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n"


def duration(seconds: float) -> str:
    """42s, 6m0s, 1h2m3s, 2d0h0m0s: rounded up to the second, since a reset that is 0.2s away
    has not happened yet."""
    if not math.isfinite(seconds) or seconds <= 0:
        return "0s"
    total = math.ceil(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h{minutes}m{secs}s"
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def dollars(micro: int) -> str:
    """Micro-dollars as dollars: $12.34, or every significant digit below a cent ($0.001234),
    so a small spend never shows as $0.00."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}${whole}.{digits}"


def amount(value: int, measure: str) -> str:
    """An amount in the unit of `measure` (dollars for usd, plain integers otherwise)."""
    return dollars(value) if measure == "usd" else str(value)


def iso_utc(unix: float) -> str:
    """ISO-8601 UTC to the second; '-' for 0 (never)."""
    if unix <= 0:
        return NONE
    return datetime.fromtimestamp(unix, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_time(unix: float) -> str:
    """ISO-8601 UTC to the millisecond: events often arrive in bursts."""
    moment = datetime.fromtimestamp(unix, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def caller(message: pb.Caller) -> str:
    """team-a, team-a/billing-svc, or '-' when the event concerns no caller."""
    if not message.namespace:
        return NONE
    return f"{message.namespace}/{message.key}" if message.key else message.namespace


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


USAGE_HEADERS = ("LIMIT", "SCOPE", "MEASURE", "PER", "USED", "LIMIT", "REMAINING", "RESET")


def usage_table(response: pb.GetUsageResponse) -> str:
    rows = []
    for item in response.limits:
        windowed = item.measure != "concurrent"
        reset = duration(item.reset_seconds) if windowed else NONE
        rows.append(
            (
                item.name,
                item.scope,
                item.measure,
                item.per or NONE,
                amount(item.used, item.measure),
                amount(item.limit, item.measure),
                amount(item.remaining, item.measure),
                reset,
            )
        )
    return table(USAGE_HEADERS, rows)


def top_table(response: pb.TopConsumersResponse) -> str:
    measure = response.measure or "tokens"
    rows = [
        (c.caller.namespace, c.caller.key or NONE, amount(c.amount, measure))
        for c in response.consumers
    ]
    return table(("NAMESPACE", "KEY", measure.upper()), rows)


def backends_table(response: pb.GetBackendsResponse) -> str:
    """One line per backend: breaker state, failures, and what its provider has left."""

    def left(value: int, reset: float) -> str:
        return NONE if value < 0 else f"{value:,}" + (f" ({duration(reset)})" if reset >= 0 else "")

    rows = [
        (
            b.backend,
            b.state + (f" {duration(b.open_for_seconds)}" if b.open_for_seconds > 0 else ""),
            str(b.failures),
            left(b.remaining_requests, b.requests_reset_seconds),
            left(b.remaining_tokens, b.tokens_reset_seconds),
            duration(b.retry_after_seconds) if b.retry_after_seconds > 0 else NONE,
            ", ".join(b.routes),
        )
        for b in response.backends
    ]
    headers = ("BACKEND", "BREAKER", "FAILURES", "REQUESTS LEFT", "TOKENS LEFT", "RETRY-AFTER",
               "ROUTES")  # fmt: skip
    return table(headers, rows)


def queue_table(response: pb.GetQueueResponse) -> str:
    """One line per capacity and class: how many wait, the longest wait against the
    class's maximum, then the capacity's limits."""
    if not response.capacities:
        return "no Capacity is defined: nothing queues\n"
    rows = [
        (
            c.name,
            q.priority_class,
            str(q.depth),
            duration(q.oldest_wait_seconds) if q.depth else NONE,
            duration(q.max_wait_seconds),
            ", ".join(f"{u.name} {u.used:,}/{u.limit:,}" for u in c.limits) if i == 0 else "",
        )
        for c in response.capacities
        for i, q in enumerate(c.classes)
    ]
    return table(("CAPACITY", "CLASS", "WAITING", "LONGEST WAIT", "MAX WAIT", "LIMITS"), rows)


def policy_text(response: pb.GetPolicyResponse) -> str:
    namespaces = ", ".join(response.namespaces) or NONE
    fields = [
        ("version", response.version or NONE),
        ("loaded at", iso_utc(response.loaded_at)),
        ("sources", ", ".join(response.sources) or NONE),
        ("namespaces", f"{len(response.namespaces)} ({namespaces})"),
        ("keys", str(response.keys)),
        ("last reload", iso_utc(response.last_reload_at)),
        ("last reload error", response.last_reload_error or "none"),
        ("routes opened", str(len(response.routes)) if response.routes else "none (default deny)"),
        ("model routes", str(len(response.model_routes)) if response.model_routes else "none"),
    ]
    width = max(len(name) for name, _ in fields) + 1
    lines = [f"{(name + ':').ljust(width)}  {value}\n" for name, value in fields]
    lines.extend(f"  {_route_line(route)}\n" for route in response.routes)
    lines.extend(f"  {_model_route_line(route)}\n" for route in response.model_routes)
    return "".join(lines)


def _model_route_line(route: pb.ModelRouteInfo) -> str:
    """`gpt-4o -> openai/gpt-4o, anthropic/claude-sonnet-4-5 (gpt-4o, cluster-wide)`."""
    where = f"namespace {route.namespace}" if route.namespace else "cluster-wide"
    return f"model {route.model} -> {', '.join(route.backends)} ({route.name}, {where})"


def _route_line(route: pb.OpenRoute) -> str:
    """`GET /v1/models -> openai for * (models, cluster-wide)`: what is open, to whom."""
    where = f"namespace {route.namespace}" if route.namespace else "cluster-wide"
    limits = f"; limits {', '.join(route.limits)}" if route.limits else ""
    return (
        f"{','.join(route.methods)} {route.path} -> {route.provider} for "
        f"{', '.join(route.namespaces)} ({route.name}, {where}{limits})"
    )


@dataclass(frozen=True, slots=True)
class FileResult:
    """The validation of one policy file, local or remote (same message either way)."""

    file: str
    result: pb.ValidatePolicyResponse


def invalid(exc: PolicyError) -> FileResult:
    problem = pb.PolicyProblem(
        file=exc.file, document=exc.document or 0, field=exc.field or "", problem=exc.problem
    )
    return FileResult(exc.file, pb.ValidatePolicyResponse(valid=False, problems=[problem]))


def read_policy(path: str) -> str:
    """The loader's limits: at most 1 MiB of UTF-8 (a BOM is allowed). '-' is stdin."""
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        else:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _file_problem(path, f"cannot be read: {exc.strerror}") from exc
    if len(raw) > MAX_FILE_BYTES:
        raise _file_problem(path, f"is larger than 1 MiB ({MAX_FILE_BYTES} bytes)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _file_problem(path, f"is not valid UTF-8 (byte offset {exc.start})") from exc


def _file_problem(path: str, problem: str) -> PolicyError:
    return PolicyError(file=path, document=None, field=None, problem=problem)


def validate_text(text: str, *, file: str) -> FileResult:
    """The server's own validator on one file's text. usd limits are accepted: whether the
    server has the price table they need is its configuration (`--remote` asks it)."""
    try:
        documents = parse_documents(text, file=file, allow_usd=True)
    except PolicyError as exc:
        return invalid(exc)
    except ConfigError as exc:
        return invalid(_file_problem(file, str(exc)))
    return FileResult(file, pb.ValidatePolicyResponse(valid=True, documents=len(documents)))


def validate_files(paths: Sequence[str]) -> list[FileResult]:
    """Every file on its own; then, when each one passes, the set loaded together the way the
    server loads its policy directory, so that a clash (two QuotaPolicies for a namespace, two
    ApiKeys with one sha256, in one file or across files) is reported on the later document."""
    texts: list[str] = []
    results: list[FileResult] = []
    for path in paths:
        try:
            texts.append(read_policy(path))
        except PolicyError as exc:
            results.append(invalid(exc))
            continue
        results.append(validate_text(texts[-1], file=path))
    if not all(item.result.valid for item in results):
        return results
    clash = _load_together(list(paths), texts)
    if clash is not None:
        index, error = clash
        results[index] = invalid(error)
    return results


def _load_together(paths: list[str], texts: list[str]) -> tuple[int, PolicyError] | None:
    """`load_directory` over copies named 0000.yaml, 0001.yaml… (its sort order is the order
    given); its error is mapped back to the paths the user typed."""
    names = [f"{index:04d}.yaml" for index in range(len(paths))]
    with tempfile.TemporaryDirectory(prefix="tokengate-validate-") as tmp:
        for name, text in zip(names, texts, strict=True):
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        try:
            load_directory(Path(tmp), allow_usd=True)
        except PolicyError as exc:
            index = names.index(exc.file) if exc.file in names else 0
            problem = exc.problem
            for name, path in zip(names, paths, strict=True):
                problem = problem.replace(f" in {name} (", f" in {path} (")
            error = PolicyError(
                file=paths[index], document=exc.document, field=exc.field, problem=problem
            )
            return index, error
    return None


def problem_text(problem: pb.PolicyProblem) -> str:
    """The loader's own wording: `file (document N): field: problem`."""
    error = PolicyError(
        file=problem.file,
        document=problem.document or None,
        field=problem.field or None,
        problem=problem.problem,
    )
    return str(error)


def validation_text(results: Sequence[FileResult]) -> str:
    lines = []
    for item in results:
        if item.result.valid:
            plural = "" if item.result.documents == 1 else "s"
            lines.append(f"ok       {item.file} ({item.result.documents} document{plural})")
        else:
            lines.extend(f"invalid  {problem_text(p)}" for p in item.result.problems)
            if not item.result.problems:
                lines.append(f"invalid  {item.file}")
    return "".join(line + "\n" for line in lines)


def validation_json(results: Sequence[FileResult]) -> dict[str, Any]:
    return {
        "valid": all(item.result.valid for item in results),
        "files": [{"file": item.file, **to_json(item.result)} for item in results],
    }


def override_text(
    request: pb.SetOverrideRequest, response: pb.SetOverrideResponse, *, now: float, unit: str
) -> str:
    """`unit` is the measure the extra amount was given in ("usd" shows it as dollars)."""
    who = caller(request.caller)
    if request.kind == pb.SetOverrideRequest.BLOCK:
        what = f"{who} is blocked"
    else:
        what = f"{who} has {amount(request.amount, unit)} extra on limit {request.limit}"
    left = duration(response.expires_at - now)
    return f"{what} until {iso_utc(response.expires_at)} (in {left})\n"


def reset_text(request: pb.ResetUsageRequest, response: pb.ResetUsageResponse) -> str:
    plural = "" if response.limits_reset == 1 else "s"
    return f"reset {response.limits_reset} limit{plural} of {caller(request.caller)}\n"


def event_line(event: pb.Event) -> str:
    """One event per line: time kind caller limit message (fixed-width, as they stream)."""
    who = caller(event.caller)
    limit = event.limit or NONE
    message = " ".join(event.message.split())  # one event, one line
    return f"{event_time(event.at)}  {event.kind:<12}  {who:<24}  {limit:<14}  {message}\n"
