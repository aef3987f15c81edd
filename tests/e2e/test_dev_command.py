"""`tokengate dev` as a script uses it: a real process on ports the kernel picks, whose one
stdout line says where everything is; pointed at any upstream and any quota store; refusing
to share its Envoy listener with a stack that is already running."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import anthropic
import grpc
import openai
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.cli import main
from extproc.dev.redis_server import RedisServer, free_port
from extproc.dev.stack import Child, child_env, port_is_free
from tests.e2e.conftest import write_policies

pytestmark = pytest.mark.e2e

ANY_PORTS = ("--port", "0", "--admin-port", "0", "--ext-proc-port", "0",
             "--control-port", "0", "--metrics-port", "0")  # fmt: skip
KEY = "tg-e2e"  # tests/e2e/conftest.py: namespace e2e, roomy limits
CHAT: Any = [{"role": "user", "content": "hello"}]


class Dev:
    """A `tokengate dev` process. A thread hands its stdout lines over a queue, so waiting
    for the ready line is bounded and ends the moment the line arrives."""

    def __init__(self, root: Path, vocab_dir: Path, *args: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.stderr_path = root / "dev.stderr"
        with self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "extproc", "dev", "--vocab-dir", str(vocab_dir),
                 "--policy-dir", str(write_policies(root / "policies")), *args],
                stdout=subprocess.PIPE, stderr=stderr, env=child_env(), text=True,
            )  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            self.lines.put(line)
        self.lines.put(None)

    def ready(self) -> dict[str, Any]:
        line = self.lines.get(timeout=120)
        assert line is not None, f"exited {self.proc.wait()}:\n{self.stderr()}"
        record: dict[str, Any] = json.loads(line)
        return record

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=60)

    def stdout_after_exit(self) -> list[str]:
        """Every stdout line not yet taken, up to the end of the stream."""
        rest = []
        while (line := self.lines.get(timeout=30)) is not None:
            rest.append(line)
        return rest


@pytest.fixture
def start_dev(tmp_path: Path, vocab_dir: Path) -> Iterator[Any]:
    started: list[Dev] = []

    def start(name: str, *args: str) -> Dev:
        started.append(Dev(tmp_path / name, vocab_dir, *args))
        return started[-1]

    yield start
    for dev in started:
        dev.stop()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def _health(port: int, token: str | None = None) -> int:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=10, metadata=metadata)
    status: int = reply.status
    return status


def _records(port: int, tag: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(
        _get(f"http://127.0.0.1:{port}/_mock/requests?tag={tag}")
    )
    return records


def _ask(ready: dict[str, Any], tag: str) -> str:
    api = openai.OpenAI(base_url=f"{ready['url']}/v1", api_key=KEY, max_retries=0,
                        default_headers={"x-request-tag": tag})  # fmt: skip
    answer = api.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    return answer.choices[0].message.content or ""


def test_the_ready_line_names_every_port_and_each_answers(start_dev: Any, tag: str) -> None:
    dev = start_dev("one", *ANY_PORTS)
    ready = dev.ready()
    ports = ready["ports"]
    assert set(ports) == {"listener", "admin", "ext_proc", "control", "metrics", "mock"}
    assert len(set(ports.values())) == 6 and all(port > 0 for port in ports.values())
    assert ready["url"] == f"http://127.0.0.1:{ports['listener']}"
    mock = f"http://127.0.0.1:{ports['mock']}"
    assert ready["upstreams"] == {"openai": mock, "anthropic": mock}

    assert _ask(ready, tag)
    assert len(_records(ports["mock"], tag)) == 1
    assert _get(f"http://127.0.0.1:{ports['admin']}/ready").strip() == "LIVE"
    serving = health_pb2.HealthCheckResponse.SERVING
    assert _health(ports["ext_proc"]) == serving
    token = Path(ready["control_token_file"]).read_text().strip()
    assert _health(ports["control"], token) == serving
    assert "tokengate_requests_total" in _get(f"http://127.0.0.1:{ports['metrics']}/metrics")
    assert ready["url"] in dev.stderr()  # the welcome, for humans, is on stderr

    assert dev.stop() == 0  # SIGTERM stops the whole stack, children included
    assert dev.stdout_after_exit() == []  # the ready line was stdout's only line
    assert all(port_is_free(port) for port in ports.values())


def test_provider_upstreams_receive_the_traffic(
    start_dev: Any, tmp_path: Path, vocab_dir: Path, tag: str
) -> None:
    """Both providers sent to a mock provider started on its own: no built-in mock runs."""
    port_file = tmp_path / "upstream.port"
    upstream = Child(
        "upstream",
        [sys.executable, "-m", "extproc", "mock-provider", "--port", "0",
         "--port-file", str(port_file), "--vocab-dir", str(vocab_dir)],
        log_dir=tmp_path, env=child_env(), ready_prefix="mock-provider listening on ",
    )  # fmt: skip
    try:
        upstream.wait_ready()  # printed after the port file is written
        url = f"http://127.0.0.1:{int(port_file.read_text())}"
        dev = start_dev("dev", *ANY_PORTS, "--openai-upstream", url, "--anthropic-upstream", url)
        ready = dev.ready()
        assert "mock" not in ready["ports"]
        assert ready["upstreams"] == {"openai": url, "anthropic": url}
        assert _ask(ready, tag)
        claude = anthropic.Anthropic(base_url=ready["url"], api_key="tg-claude", max_retries=0,
                                     default_headers={"x-request-tag": tag})  # fmt: skip
        assert claude.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=CHAT)
        records = _records(int(port_file.read_text()), tag)
        assert sorted(r["path"] for r in records) == ["/v1/chat/completions", "/v1/messages"]
        sent = json.dumps([r["credentials"] for r in records])
        assert KEY not in sent and "tg-claude" not in sent  # gateway keys stop at the gateway
    finally:
        upstream.stop()


def test_a_second_stack_on_the_same_listener_port_is_refused(
    start_dev: Any, tmp_path: Path, tag: str
) -> None:
    first = start_dev("first", *ANY_PORTS).ready()
    listener = first["ports"]["listener"]
    second = start_dev("second", *ANY_PORTS, "--port", str(listener),
                       "--run-dir", str(tmp_path / "second-run"))  # fmt: skip
    assert second.proc.wait(timeout=60) == 1
    assert f"Envoy listener port {listener} on 127.0.0.1 is already in use" in second.stderr()
    assert "nothing was started" in second.stderr()
    assert second.stdout_after_exit() == []  # no ready line
    assert not (tmp_path / "second-run").exists()  # not even its run directory
    assert _ask(first, tag)  # the first stack still serves, with all the traffic
    assert len(_records(first["ports"]["mock"], tag)) == 1


def test_a_redis_quota_store_holds_the_budget(start_dev: Any, tmp_path: Path, tag: str) -> None:
    server = RedisServer(tmp_path, tcp_port=free_port()).start()
    try:
        assert server.url.startswith("redis://127.0.0.1:")
        ready = start_dev("dev", *ANY_PORTS, "--quota-store", server.url).ready()
        store = redis.Redis.from_url(server.url)
        assert not store.keys("*e2e*")
        assert _ask(ready, tag)
        assert store.keys("*e2e*")  # the call was counted in Redis, under its namespace
    finally:
        server.stop()


def test_a_price_table_prices_what_is_spent(start_dev: Any, tag: str) -> None:
    prices = Path(__file__).parents[2] / "examples" / "prices.yaml"
    ready = start_dev("dev", *ANY_PORTS, "--price-table", str(prices)).ready()
    assert _ask(ready, tag)
    metrics = _get(f"http://127.0.0.1:{ready['ports']['metrics']}/metrics").splitlines()
    name = "tokengate_spend_usd_micros_total{"
    spent = [line for line in metrics if line.startswith(name) and "gpt-4o-mini" in line]
    assert spent and float(spent[0].rsplit(" ", 1)[1]) > 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--quota-store", "mysql://db"), "--quota-store must be 'memory' or a URL"),
        (("--openai-upstream", "https://api.openai.com/v1"), "--openai-upstream: expected"),
        (("--anthropic-upstream", "api.anthropic.com"), "--anthropic-upstream: expected"),
        (("--policy-dir", "/nonexistent/policies"), "--policy-dir /nonexistent/policies"),
        (("--price-table", "/nonexistent/prices.yaml"), "--price-table /nonexistent/prices"),
    ],
)
def test_a_bad_flag_stops_before_anything_starts(
    flags: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dev", *ANY_PORTS, *flags]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""
