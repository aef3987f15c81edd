"""Priorities when capacity is short, through the real Envoy with the official OpenAI SDK.

The measured scenario: two sidecar worker processes on one Redis, a shared capacity of
C = 10 requests/s, a flood of batch traffic at 3C and interactive traffic at 0.3C for
eight seconds. Interactive requests wait at most 10 % of their class's maximum and none is
refused; batch gets what remains of C; no request waits past its class's maximum; the
admission order across both workers is the single queue's (inversions counted).
Shedding: a rising queue steps through background refused, batch refused, standard sent
to the cheaper model, in that order (the control API's event stream says so).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from extproc.dev.stack import LocalStack
from tests.e2e.harness import metric_value, mock_records, wait_until
from tests.redis_server import RedisServer
from tests.waiting import wait_until_async

C = 10  # the capacity: requests per second
FLOOD_S = 8.0
MAX_WAIT = {"interactive": 2.0, "batch": 20.0}
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _policies(capacity: str) -> str:
    return f"""
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: prio, namespace: prio}}
spec:
  limits: [{{name: rpm, requests: 1000000, per: 1m}}]
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: batch, namespace: prio}}
spec: {{sha256: {_sha("tg-batch")}, priority: batch}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: app, namespace: prio}}
spec: {{sha256: {_sha("tg-app")}, priority: interactive}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: probe, namespace: prio}}
spec: {{sha256: {_sha("tg-probe")}, limits: [{{name: once, requests: 1, per: 1d}}]}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: any, namespace: prio}}
spec: {{sha256: {_sha("tg-any")}, priority: standard, maxPriority: interactive}}
---
{capacity}
"""


FLOOD_CAPACITY = f"""
apiVersion: tokengate.dev/v1
kind: Capacity
metadata: {{name: tier}}
spec:
  provider: openai
  models: ["gpt-4o-mini"]
  limits: [{{name: rps, requests: {C}, per: 1s, algorithm: bucket}}]
  maxWait: {{interactive: 2s, standard: 10s, batch: 20s, background: 0s}}
  shedding: {{refuseBatchAfter: 5s}}
"""
SHED_CAPACITY = """
apiVersion: tokengate.dev/v1
kind: Capacity
metadata: {name: slow-tier}
spec:
  provider: openai
  models: ["gpt-4o"]
  limits: [{name: one-at-a-time, concurrent: 1}]
  maxWait: {interactive: 30s, standard: 30s, batch: 30s, background: 0s}
  shedding: {refuseBatchAfter: 2s, downgradeStandardAfter: 4s, cheaper: {"gpt-4o": gpt-4o-mini}}
"""


def _stack(root: Path, vocab_dir: Path, capacity: str, *serve_args: str) -> LocalStack:
    policies = root / "policies"
    policies.mkdir()
    (policies / "policies.yaml").write_text(_policies(capacity))
    return LocalStack(
        policy_dir=policies, run_dir=root / "run", vocab_dir=vocab_dir,
        extra_serve_args=serve_args,
    ).start()  # fmt: skip


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("priorities-fleet")
    redis = RedisServer(root).start()
    stack = _stack(root, vocab_dir, FLOOD_CAPACITY, "--quota-store", redis.url, "--workers", "2")
    yield stack
    stack.stop()
    redis.stop()


@dataclass(frozen=True, slots=True)
class Outcome:
    klass: str
    sent: float  # monotonic seconds
    status: int
    queued_s: float  # what the sidecar says it waited (0 when refused)
    retry_after: str | None


async def _one(api: openai.AsyncOpenAI, key: str, klass: str, at: float) -> Outcome:
    await asyncio.sleep(max(0.0, at - time.monotonic()))  # open loop: sent on schedule
    sent = time.monotonic()
    try:
        raw = await api.with_options(api_key=key).chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            max_tokens=5,
        )
    except openai.RateLimitError as error:
        retry = error.response.headers.get("retry-after")
        return Outcome(klass, sent, 429, 0.0, retry)
    queued = float(raw.headers.get("x-tokengate-queued-ms", "nan")) / 1000
    return Outcome(klass, sent, raw.http_response.status_code, queued, None)


async def _flood(stack: LocalStack) -> list[Outcome]:
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=1000), timeout=60)
    api = openai.AsyncOpenAI(
        base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0, http_client=http
    )
    start = time.monotonic() + 0.2
    plan = [("tg-batch", "batch", start + i / (3 * C)) for i in range(int(FLOOD_S * 3 * C))]
    plan += [
        ("tg-app", "interactive", start + 0.05 + i / (0.3 * C))
        for i in range(int(FLOOD_S * 0.3 * C))
    ]
    try:
        return await asyncio.gather(*(_one(api, key, klass, at) for key, klass, at in plan))
    finally:
        await http.aclose()


def _inversions(done: list[Outcome]) -> tuple[int, int]:
    """Pairs the single queue orders one way and the fleet admitted the other (beyond the
    50 ms a refill and the measurement blur), out of the pairs that waited together."""
    slack = 0.05
    waited = [o for o in done if o.queued_s > 0]
    inverted = comparable = 0
    for first in waited:
        first_deadline = first.sent + MAX_WAIT[first.klass]
        first_in = first.sent + first.queued_s
        for other in waited:
            other_in = other.sent + other.queued_s
            if other is first or first.sent >= other_in:
                continue  # `first` was not yet waiting when `other` went in
            if first_deadline + slack < other.sent + MAX_WAIT[other.klass]:
                comparable += 1
                inverted += other_in + slack < first_in
    return inverted, comparable


def test_interactive_goes_first_and_batch_gets_the_rest_across_two_workers(
    fleet: LocalStack,
) -> None:
    outcomes = asyncio.run(_flood(fleet))
    interactive = [o for o in outcomes if o.klass == "interactive"]
    batch = [o for o in outcomes if o.klass == "batch"]
    assert all(o.status == 200 for o in interactive), "no interactive request is refused"
    waits = sorted(o.queued_s for o in interactive)
    p99 = waits[min(len(waits) - 1, int(0.99 * len(waits)))]
    assert p99 <= 0.1 * MAX_WAIT["interactive"], waits
    served = [o for o in batch if o.status == 200]
    refused = [o for o in batch if o.status == 429]
    assert len(served) + len(refused) == len(batch)
    assert all(o.retry_after is not None and float(o.retry_after) >= 1 for o in refused)
    # What remains of C once interactive took its share, over the flood (the bucket's
    # burst of C at the start is extra): at least 90 % of it.
    admitted_in_flood = [o for o in served if o.sent + o.queued_s <= served[0].sent + FLOOD_S]
    assert len(admitted_in_flood) >= 0.9 * (C - 0.3 * C) * FLOOD_S, len(admitted_in_flood)
    assert max(o.queued_s for o in served) <= MAX_WAIT["batch"]
    inverted, comparable = _inversions([*interactive, *served])
    assert comparable > 100
    assert inverted <= 0.02 * comparable, (inverted, comparable)


# -- shedding ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[LocalStack]:
    stack = _stack(tmp_path_factory.mktemp("priorities-shed"), vocab_dir, SHED_CAPACITY)
    yield stack
    stack.stop()


class Events:
    """A real `tokengate ctl events` process, its lines read as they come. Subscribed once
    it has shown a refusal this test provoked (nothing else says a subscription is in
    place)."""

    def __init__(self, stack: LocalStack) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "extproc", "ctl", "--server",
             f"127.0.0.1:{stack.ports['control']}", "--token-file",
             str(stack.control_token_file), "events", "--kind", "shed", "--kind", "refusal",
             "--output", "json"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[dict[str, str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        probe = httpx.Client(base_url=f"{stack.base_url}/v1", timeout=30)
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 5}
        headers = {"authorization": "Bearer tg-probe"}
        wait_until(
            lambda: (
                probe.post("/chat/completions", json=body, headers=headers).status_code == 429
                and not self.lines.empty()
            ),
            seconds=30,
        )
        assert self.lines.get_nowait()["kind"] == "refusal"

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.put(json.loads(line))

    def sheds(self, count: int) -> list[dict[str, str]]:
        """The next `count` shed events (the probe's further refusals are skipped)."""
        seen: list[dict[str, str]] = []
        try:
            while len(seen) < count:
                event = self.lines.get(timeout=30)
                if event["kind"] == "shed":
                    seen.append(event)
        finally:
            self._proc.kill()
            self._proc.wait()
        return seen


def test_a_rising_queue_sheds_background_then_batch_then_downgrades_standard(
    single: LocalStack,
) -> None:
    watcher = Events(single)
    http = httpx.Client(base_url=f"{single.base_url}/v1", timeout=60)

    def send(klass: str, *, hold_ms: int = 0) -> httpx.Response:
        headers = {"authorization": "Bearer tg-any", "x-tokengate-priority": klass}
        if hold_ms:
            headers["x-mock-delay-ms"] = str(hold_ms)
        body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 5}
        return http.post("/chat/completions", json=body, headers=headers)

    async def rise() -> list[httpx.Response]:
        loop = asyncio.get_running_loop()
        # Every request below blocks a thread while it waits: enough for all at once.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=16))
        holder = loop.run_in_executor(None, functools.partial(send, "interactive", hold_ms=9000))
        await loop.run_in_executor(None, _until_held, single)
        waiting: list[asyncio.Future[httpx.Response]] = []
        steps = []
        # One request holds the only slot; each interactive request queued behind it adds
        # a second (CONCURRENT_TURN_S) to the estimated wait of whoever comes next.
        for klass, queued_before in (("background", 1), ("batch", 3), ("standard", 5)):
            while len(waiting) < queued_before:
                waiting.append(loop.run_in_executor(None, send, "interactive"))
                await _until_queued(single, len(waiting))
            steps.append(await loop.run_in_executor(None, send, klass))
        shown.update(await loop.run_in_executor(None, _ctl_queue, single))
        return [*steps, await holder, *[await w for w in waiting]]

    shown: dict[str, object] = {}
    answers = asyncio.run(rise())
    background, batch, standard, holder, *interactive = answers
    assert (background.status_code, batch.status_code) == (429, 429)
    assert standard.status_code == 200
    assert standard.headers["x-tokengate-model-substituted"] == "gpt-4o -> gpt-4o-mini"
    assert holder.status_code == 200 and all(r.status_code == 200 for r in interactive)
    assert all("x-tokengate-model-substituted" not in r.headers for r in interactive)
    events = watcher.sheds(3)
    capacities: list[dict[str, Any]] = shown["capacities"]  # type: ignore[assignment]
    depths = {c["priority_class"]: c["depth"] for c in capacities[0]["classes"]}
    assert depths == {"interactive": 5, "standard": 0, "batch": 0, "background": 0}
    assert capacities[0]["limits"][0]["used"] == 1  # the request holding the only slot
    assert [(e["limit"], e["message"].split(": ")[1].split(" (")[0]) for e in events] == [
        ("background", "background refused"),
        ("batch", "batch refused"),
        ("standard", "standard downgraded"),
    ]


def test_a_client_that_gives_up_while_queued_leaves_the_queue_at_once(
    single: LocalStack,
) -> None:
    """Through Envoy: the client's connection closes, Envoy resets the ext_proc stream, the
    sidecar takes the ticket out (the queue is empty again long before its 3 s hold ends)."""
    http = httpx.Client(base_url=f"{single.base_url}/v1", timeout=60)
    body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 5}
    headers = {"authorization": "Bearer tg-any", "x-tokengate-priority": "interactive"}
    gone = {"capacity": "slow-tier", "class": "interactive", "action": "gone"}
    before = metric_value(single, "tokengate_shed_total", **gone)
    with ThreadPoolExecutor(max_workers=2) as pool:
        holder = pool.submit(
            http.post, "/chat/completions", json=body,
            headers={**headers, "x-mock-delay-ms": "4000"},
        )  # fmt: skip
        _until_held(single)
        impatient = httpx.Client(base_url=f"{single.base_url}/v1", timeout=1.0)
        with pytest.raises(httpx.TimeoutException):
            impatient.post("/chat/completions", json=body, headers=headers)
        impatient.close()  # its connection goes: Envoy resets the stream
        left = time.monotonic()
        wait_until(lambda: metric_value(single, "tokengate_shed_total", **gone) == before + 1)
        assert time.monotonic() - left < 2.0  # not the ticket's hold running out (3 s)
        capacities: list[dict[str, Any]] = _ctl_queue(single)["capacities"]  # type: ignore[assignment]
        assert all(c["depth"] == 0 for c in capacities[0]["classes"])
        assert holder.result().status_code == 200


def _until_held(stack: LocalStack) -> None:
    """Until the request sent to hold the capacity's only slot holds it (the next ones must
    queue behind it, not overtake it on a busy machine)."""

    def held() -> bool:
        capacities: list[dict[str, Any]] = _ctl_queue(stack)["capacities"]  # type: ignore[assignment]
        return bool(capacities[0]["limits"][0]["used"] == 1)

    wait_until(held, seconds=20)


def _ctl_queue(stack: LocalStack) -> dict[str, object]:
    """`tokengate ctl queue --output json`, as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "extproc", "ctl", "--server",
         f"127.0.0.1:{stack.ports['control']}", "--token-file", str(stack.control_token_file),
         "queue", "--output", "json"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    shown: dict[str, object] = json.loads(done.stdout)
    return shown


async def _until_queued(stack: LocalStack, depth: int) -> None:
    """Until `depth` requests wait (the sidecar's queue depth metric)."""
    labels = {"capacity": "slow-tier", "class": "interactive"}
    await wait_until_async(
        lambda: metric_value(stack, "tokengate_queue_depth", **labels) >= depth, seconds=20
    )


# -- budget degradation ---------------------------------------------------------------------

THRIFTY = f"""
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: thrifty, namespace: thrifty}}
spec:
  limits: [{{name: daily-usd, usd: 0.01, per: 1d}}]
  degrade:
  - {{limit: daily-usd, at: 30%, models: {{"gpt-4o": gpt-4o-mini}}}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: app, namespace: thrifty}}
spec: {{sha256: {_sha("tg-thrifty")}}}
"""
PRICES = Path(__file__).parents[2] / "examples" / "prices.yaml"


@pytest.fixture(scope="module")
def thrifty(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("priorities-degrade")
    policies = root / "policies"
    policies.mkdir()
    (policies / "policies.yaml").write_text(THRIFTY)
    stack = LocalStack(
        policy_dir=policies, run_dir=root / "run", vocab_dir=vocab_dir,
        extra_serve_args=("--price-table", str(PRICES)),
    ).start()  # fmt: skip
    yield stack
    stack.stop()


def test_crossing_a_budget_threshold_sends_the_next_request_to_the_cheaper_model(
    thrifty: LocalStack, tag: str
) -> None:
    api = openai.OpenAI(
        base_url=f"{thrifty.base_url}/v1", api_key="tg-thrifty", max_retries=0, timeout=60,
        default_headers={"x-request-tag": tag, "x-mock-completion-tokens": "300"},
    )  # fmt: skip

    def ask() -> tuple[str | None, str, tuple[int, int]]:
        raw = api.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=300
        )
        answer = raw.parse()
        assert answer.usage is not None
        usage = (answer.usage.prompt_tokens, answer.usage.completion_tokens)
        return raw.headers.get("x-tokengate-model-substituted"), answer.model, usage

    substituted, served, _ = ask()  # reserved ~$0.003 of the day's $0.01: past 30 %
    assert (substituted, served) == (None, "gpt-4o")
    substituted, served, (prompt, completion) = ask()
    assert substituted == "gpt-4o -> gpt-4o-mini"
    assert served == "gpt-4o-mini"
    assert [r["model"] for r in mock_records(thrifty, tag)] == ["gpt-4o", "gpt-4o-mini"]
    # Billed at the cheaper model's price: $0.15 / $0.60 per million input / output tokens,
    # the exact sum rounded up once to whole micro-dollars (policy/prices.py).
    spend = metric_value(
        thrifty, "tokengate_spend_usd_micros_total", namespace="thrifty", model="gpt-4o-mini"
    )
    assert spend == -(-(15 * prompt + 60 * completion) // 100)
    degraded = metric_value(
        thrifty, "tokengate_degraded_total", namespace="thrifty", reason="budget"
    )
    assert degraded == 1
