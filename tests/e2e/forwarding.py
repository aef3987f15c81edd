"""Helpers for the forwarding tests (issue 13): a stack whose provider keys are canaries aimed
at a recording mock, a raw HTTP/1.1 client that sends exactly the bytes a row names, and the
two verdicts a request can get — refused in the provider's format, or forwarded to the right
upstream with exactly one credential, the injected one.

The stack's own mock is not used: `LocalStack` hands it one key for both providers, and these
tests must tell the OpenAI key from the Anthropic key. The mock started here takes any key and
records everything, so every verdict comes from what the upstream saw.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import secrets
import socket
import sys
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from extproc.dev.stack import Child, LocalStack, child_env
from extproc.kube.envoy_config import Upstream

Headers = Sequence[tuple[str, str]]
CREDENTIAL_QUERY = ("key", "api_key", "api-key", "access_token", "token")


def canary(provider: str) -> str:
    """A provider key that must appear nowhere but in the one header injected toward it."""
    return f"sk-canary-{provider}-{secrets.token_hex(12)}"


def gateway_keys(namespaces: Iterable[str]) -> dict[str, str]:
    """A random gateway key per namespace: random so a log scan cannot match by accident."""
    return {ns: f"tg-{ns}-{secrets.token_hex(8)}" for ns in namespaces}


def api_key_documents(keys: Mapping[str, str]) -> str:
    docs = []
    for namespace, key in keys.items():
        digest = hashlib.sha256(key.encode()).hexdigest()
        docs.append(
            "apiVersion: tokengate.dev/v1\nkind: ApiKey\n"
            f"metadata: {{name: client, namespace: {namespace}}}\nspec: {{sha256: {digest}}}\n"
        )
    return "---\n".join(docs)


def start_gateway(
    root: Path, vocab_dir: Path, policies: str, *, serve_args: tuple[str, ...] = ()
) -> LocalStack:
    """Mock provider (any key accepted, everything recorded) + sidecar + Envoy, with canary
    provider keys injected toward the mock. The mock's log is kept out of `run_dir`, whose
    logs are Envoy's and the sidecar's only."""
    (root / "policies").mkdir(parents=True)
    (root / "policies" / "policies.yaml").write_text(policies)
    (root / "mock").mkdir()
    mock = Child(
        "mock-provider",
        [sys.executable, "-m", "extproc", "mock-provider", "--port", "0",
         "--vocab-dir", str(vocab_dir)],
        log_dir=root / "mock", env=child_env(), ready_prefix="mock-provider listening on ",
    )  # fmt: skip
    try:
        port = int(mock.wait_ready().rsplit(":", 1)[1])
    except BaseException:
        mock.stop()
        raise
    stack = LocalStack(
        policy_dir=root / "policies",
        run_dir=root / "run",
        vocab_dir=vocab_dir,
        openai_api_key=canary("openai"),
        anthropic_api_key=canary("anthropic"),
        openai_upstream=Upstream.local(port),
        anthropic_upstream=Upstream.local(port),
        extra_serve_args=serve_args,
    )
    stack.children["mock"] = mock  # stopped with the stack, even if start() fails
    stack.ports["mock"] = port
    return stack.start()


# --- the recording upstream -----------------------------------------------------------------


def _mock_get(stack: LocalStack, path: str) -> Any:
    url = f"http://127.0.0.1:{stack.ports['mock']}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def upstream_total(stack: LocalStack) -> int:
    """Requests the upstream received so far, whatever their tag (a stripped tag included)."""
    total: int = _mock_get(stack, "/_mock/counts")["total"]
    return total


def upstream_records(stack: LocalStack, tag: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = _mock_get(stack, f"/_mock/requests?tag={tag}")
    return records


# --- a raw HTTP/1.1 client ------------------------------------------------------------------


@dataclass(frozen=True)
class Got:
    """What the client got. `body` is decoded (gzip/deflate undone); `headers` are as sent,
    names lower-cased, `content-encoding` included."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    kept_open: bool = True
    complete: bool = True  # False: the stream was reset mid-body (a cut), `body` is partial

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


class _Reader:
    """The connection's one buffered reader as HTTPResponse sees it: closing a response must
    not close it, so the next response on the connection is read from the same buffer."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def makefile(self, *_: Any, **__: Any) -> _Reader:
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def close(self) -> None:
        pass


class Connection:
    """One client connection to the gateway; requests go out byte for byte as given."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self._file: BinaryIO = self._sock.makefile("rb")

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_: object) -> None:
        self._file.close()
        self._sock.close()

    def send(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: bytes | None,
        *,
        chunked: bool = False,
        trailers: Headers = (),
    ) -> Got:
        lines = [f"{method} {target} HTTP/1.1", "host: gateway"]
        lines += [f"{name}: {value}" for name, value in headers]
        payload = b""
        if chunked:
            lines.append("transfer-encoding: chunked")
            data = body or b""
            payload = (b"%x\r\n%b\r\n" % (len(data), data) if data else b"") + b"0\r\n"
            payload += b"".join(f"{n}: {v}\r\n".encode() for n, v in trailers) + b"\r\n"
        elif body is not None:
            lines.append(f"content-length: {len(body)}")
            payload = body
        self._sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        response = http.client.HTTPResponse(_Reader(self._file), method=method)  # type: ignore[arg-type]
        response.begin()
        got = tuple((k.lower(), v) for k, v in response.getheaders())
        try:
            raw = response.read()
        except http.client.IncompleteRead as reset:  # Envoy resets a stream it cut
            return Got(response.status, got, reset.partial, kept_open=False, complete=False)
        coding = next((v.strip().lower() for k, v in got if k == "content-encoding"), "")
        if coding == "gzip":
            raw = gzip.decompress(raw)
        elif coding == "deflate":
            raw = zlib.decompress(raw)
        return Got(response.status, got, raw, kept_open=not response.will_close)


def send(
    port: int, method: str, target: str, headers: Headers, body: bytes | None, **kw: Any
) -> Got:
    with Connection(port) as conn:
        return conn.send(method, target, headers, body, **kw)


# --- verdicts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Forwarded:
    """Reached `provider`'s upstream once, on `path`, and the client got its answer."""

    provider: str
    path: str
    status: int = 200


@dataclass(frozen=True)
class Refused:
    """Refused by the gateway in `provider`'s format, upstream never called. `kind` is the
    OpenAI `code` or the Anthropic `error.type` the contract names (None: shape only)."""

    status: int
    provider: str
    kind: str | None = None
    allow: str | None = None  # a method the 405's `allow` header must list


@dataclass(frozen=True)
class Either:
    """Where the contract allows several answers: governed exactly as the canonical path
    (`forwarded`, None where that path is itself refused), or one of `refusals` before the
    upstream; never forwarded as spelled."""

    forwarded: Forwarded | None
    refusals: tuple[Refused, ...]


Expect = Forwarded | Refused | Either


@dataclass(frozen=True)
class Secrets:
    """What the upstream may see (`injected`) and what it must never see (`forbidden`)."""

    injected: Mapping[str, tuple[str, str]]  # provider -> (header, value)
    forbidden: tuple[str, ...] = field(default=())


def check_refused(got: Got, expect: Refused, called: int) -> None:
    assert got.status == expect.status, (got.status, got.body[:300])
    assert called == 0, f"refused with {got.status}, yet the upstream was called {called}x"
    assert (got.header("content-type") or "").startswith("application/json"), got.headers
    check_error_format(got.json(), expect.provider, expect.kind)
    if expect.allow is not None:
        allowed = [m.strip() for m in (got.header("allow") or "").split(",")]
        assert expect.allow in allowed, got.headers


def check_error_format(body: Any, provider: str, kind: str | None) -> None:
    """OpenAI `{"error": {"message", "type", "code"}}`; Anthropic
    `{"type": "error", "error": {"type", "message"}}`."""
    if provider == "openai":
        error = body["error"]
        assert isinstance(error["message"], str) and error["message"], body
        assert isinstance(error["type"], str) and error["type"], body
        assert "code" in error, body
        if kind is not None:
            assert error["code"] == kind, body
    else:
        assert body["type"] == "error", body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
        if kind is not None:
            assert body["error"]["type"] == kind, body


def check_forwarded(
    got: Got, expect: Forwarded, called: int, records: list[dict[str, Any]], secrets_: Secrets
) -> dict[str, Any]:
    """The client got the upstream's answer; the upstream got one request on the canonical
    path with exactly one credential (the right provider's injected key) and nothing a client
    or another provider could have put there. Returns the record."""
    assert got.status == expect.status, (got.status, got.body[:300])
    assert called == 1 and len(records) == 1, (called, records)
    (record,) = records
    assert record["path"] == expect.path, record["target"]
    name, value = secrets_.injected[expect.provider]
    assert record["credentials"] == {name: [value]}, record["credentials"]
    headers = [(n, v) for n, v in record["headers"]]
    assert [v for n, v in headers if n == "accept-encoding"] == ["identity"], headers
    assert not [n for n, _ in headers if "_" in n], headers
    query = urllib.parse.parse_qsl(record["query"], keep_blank_values=True)
    assert not [k for k, _ in query if k.lower() in CREDENTIAL_QUERY], record["target"]
    seen = json.dumps([record["target"], record["headers"], record["trailers"]])
    others = [v for p, (_, v) in secrets_.injected.items() if p != expect.provider]
    for secret in (*secrets_.forbidden, *others):
        assert secret not in seen, f"{secret!r} reached the upstream: {seen}"
    return record


def check(
    got: Got, expect: Expect, called: int, records: list[dict[str, Any]], secrets_: Secrets
) -> None:
    if isinstance(expect, Refused):
        check_refused(got, expect, called)
    elif isinstance(expect, Forwarded):
        check_forwarded(got, expect, called, records, secrets_)
    else:
        refusal = next((r for r in expect.refusals if r.status == got.status), None)
        if expect.forwarded is not None and (refusal is None or called):
            check_forwarded(got, expect.forwarded, called, records, secrets_)
        else:
            assert refusal is not None, (got.status, got.body[:300], expect)
            check_refused(got, refusal, called)
