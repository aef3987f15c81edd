"""Budgets the provider itself enforces: the completion cap written into the request,
clamped to what the caller's tightest token or dollar limit still allows after the prompt,
through the real in-process store (so the arithmetic meets the counters it reads)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from extproc.gate.processor import Processor
from extproc.gate.runtime import Runtime
from extproc.policy.model import Limit, Measure
from extproc.policy.prices import PriceTable
from extproc.quota import Cost, MemoryBackend, Scope, ScopedLimit, limits_for
from extproc.quota.clamp import fit_within, per_choice, room_after
from extproc.quota.costing import Costing
from tests import envoy_messages as em
from tests.gate_driver import runtime_for, start, used

PROMPT = 8  # "hello" in one message, with OpenAI's framing (the role is a token too)


def _policy(*, extra: str = "", tokens: int = 100) -> str:
    return f"""
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: team, namespace: team}}
spec:
  defaultMaxTokens: 50
{extra}  limits:
    - {{name: tokens, tokens: {tokens}, per: 1h, algorithm: calendar}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: svc, namespace: team}}
spec: {{sha256: {hashlib.sha256(b"tg-key").hexdigest()}}}
"""


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def vocab(vocab_dir: Path) -> None:
    """Every test here counts a prompt."""


async def _send(rt: Runtime, payload: dict[str, Any]) -> tuple[Processor, Any]:
    processor, _ = await start(rt, em.request_headers("tg-key"))
    return processor, await processor.on_request_body(em.body(payload))


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}], **fields}


def _sent(reply: Any) -> dict[str, Any]:
    """The body the gateway sends upstream instead of the client's."""
    return dict(json.loads(reply.request_body.response.body_mutation.body))


def _used_tokens(rt: Runtime) -> int:
    policy = rt.policies.current.policies["team"]
    return int(run(used(rt, limits_for(policy, None)[0])))


@pytest.mark.usefixtures("vocab")
def test_a_request_without_a_cap_gets_the_policy_default_written() -> None:
    rt = runtime_for(_policy())
    _, reply = run(_send(rt, _chat()))
    assert _sent(reply)["max_completion_tokens"] == 50
    assert _used_tokens(rt) == PROMPT + 50


@pytest.mark.usefixtures("vocab")
def test_a_cap_larger_than_the_budget_allows_is_lowered_and_said() -> None:
    rt = runtime_for(_policy())
    processor, reply = run(_send(rt, _chat(max_tokens=500)))
    assert _sent(reply)["max_tokens"] == 100 - PROMPT  # what the limit still allows
    assert _used_tokens(rt) == 100
    head = run(processor.on_response_headers(em.response_headers(200)))
    sets = em.set_headers(head.response_headers.response.header_mutation)
    assert sets["x-tokengate-max-tokens"] == str(100 - PROMPT)


@pytest.mark.usefixtures("vocab")
def test_a_cap_within_the_budget_is_forwarded_untouched() -> None:
    rt = runtime_for(_policy())
    _, reply = run(_send(rt, _chat(max_tokens=20)))
    assert not reply.request_body.response.HasField("body_mutation")


@pytest.mark.usefixtures("vocab")
def test_n_shares_the_room_between_its_completions() -> None:
    rt = runtime_for(_policy())
    _, reply = run(_send(rt, _chat(n=4, max_tokens=500)))
    assert _sent(reply)["max_tokens"] == (100 - PROMPT) // 4  # 23 each, 92 for four
    assert _used_tokens(rt) == PROMPT + 4 * 23


@pytest.mark.usefixtures("vocab")
def test_only_when_not_even_a_minimal_answer_fits_is_it_429() -> None:
    rt = runtime_for(_policy(tokens=PROMPT + 16))  # room for exactly 16: allowed
    _, reply = run(_send(rt, _chat(max_tokens=500)))
    assert _sent(reply)["max_tokens"] == 16
    rt = runtime_for(_policy(tokens=PROMPT + 15))  # 15 < minCompletionTokens (16)
    _, reply = run(_send(rt, _chat(max_tokens=500)))
    body = json.loads(reply.immediate_response.body)
    assert reply.immediate_response.status.code == 429
    # The refusal names what even the minimal answer needs, not the first, larger ask.
    assert f"it needs {PROMPT + 16} but the limit is {PROMPT + 15}" in body["error"]["message"]
    assert _used_tokens(rt) == 0  # the refused retries left nothing behind


@pytest.mark.usefixtures("vocab")
def test_a_spent_budget_says_how_much_was_used() -> None:
    rt = runtime_for(_policy(tokens=100))
    run(_send(rt, _chat(max_tokens=80)))  # 8 + 80 held
    _, reply = run(_send(rt, _chat()))  # 12 left: less than a minimal answer
    message = json.loads(reply.immediate_response.body)["error"]["message"]
    assert f"used {PROMPT + 80}, requested {PROMPT + 16}" in message


@pytest.mark.usefixtures("vocab")
def test_the_minimal_answer_is_a_policy_field() -> None:
    rt = runtime_for(_policy(tokens=PROMPT + 15, extra="  minCompletionTokens: 10\n"))
    _, reply = run(_send(rt, _chat(max_tokens=500)))
    assert _sent(reply)["max_tokens"] == 15


@pytest.mark.usefixtures("vocab")
def test_the_cap_never_goes_below_what_the_api_accepts() -> None:
    """The Responses API refuses `max_output_tokens` under 16, whatever the policy says."""

    def respond(budget: int) -> Any:
        rt = runtime_for(_policy(tokens=budget, extra="  minCompletionTokens: 1\n"))
        processor, _ = run(start(rt, em.request_headers("tg-key", path="/v1/responses")))
        return run(processor.on_request_body(em.body({"model": "gpt-4o", "input": "hello"})))

    assert _sent(respond(40))["max_output_tokens"] >= 16  # room for more than 16: capped
    assert respond(20).immediate_response.status.code == 429  # under 16 left: refused


@pytest.mark.usefixtures("vocab")
def test_opting_out_keeps_reserve_and_settle() -> None:
    rt = runtime_for(_policy(extra="  clampCompletion: false\n"))
    _, reply = run(_send(rt, _chat()))
    assert not reply.request_body.response.HasField("body_mutation")
    _, reply = run(_send(rt, _chat(max_tokens=500)))
    assert reply.immediate_response.status.code == 429


@pytest.mark.usefixtures("vocab")
def test_a_stream_reserving_part_gets_a_cap_up_to_the_room_left() -> None:
    rt = runtime_for(_policy(extra="  streamReserveTokens: 10\n"))
    _, reply = run(_send(rt, _chat(stream=True)))
    sent = _sent(reply)
    assert sent["max_completion_tokens"] == 50  # the default fits: 7 + 10 held, 83 left
    assert sent["stream_options"] == {"include_usage": True}
    assert _used_tokens(rt) == PROMPT + 10


# -- the arithmetic ---------------------------------------------------------------------

NS = Scope("team")
PRICE = PriceTable.parse(
    "apiVersion: tokengate.dev/v1\nkind: PriceTable\nprices:\n"
    "  - {model: m, input: 1.00, output: 2.00}\n",
    file="prices.yaml",
).price_for("m")


def test_room_after_takes_the_tightest_token_or_dollar_limit() -> None:
    async def states() -> Any:
        backend = MemoryBackend()
        limits = [
            ScopedLimit(NS, Limit("rpm", Measure.REQUESTS, 10, 60)),
            ScopedLimit(NS, Limit("tokens", Measure.TOKENS, 1000, 3600)),
            ScopedLimit(NS, Limit("usd", Measure.USD, 300, 3600)),  # 300 micro-dollars
        ]
        return (await backend.reserve("r", limits, Cost(1, 100, 100))).states

    costing = Costing(PRICE)
    # 200 micro-dollars left at 2 $/M output = 100 tokens; 900 tokens left on the other.
    assert room_after(run(states()), costing) == 100
    assert room_after((), costing) is None


def test_fit_within_is_what_the_refusing_limit_leaves_beside_the_prompt() -> None:
    async def refusal() -> Any:
        backend = MemoryBackend()
        tokens = ScopedLimit(NS, Limit("tokens", Measure.TOKENS, 100, 3600))
        await backend.reserve("a", [tokens], Cost(1, 60))
        return (await backend.reserve("b", [tokens], Cost(1, 10 + 50))).refusal

    assert fit_within(run(refusal()), Costing(None), completion=50) == 100 - 60 - 10
    assert per_choice(30, 4) == 7
