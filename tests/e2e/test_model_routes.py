"""Model routes through the real Envoy, driven by the official SDKs: a failing primary is
failed over to the next backend (translated when it speaks the other API), the answer
comes back in the client's own format, and it is charged as the backend that served it.
The mock provider fails one model and serves the other (`x-mock-only-model`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from extproc.ctl import main as ctl
from extproc.dev.stack import LocalStack
from tests.e2e.harness import anthropic_client, client, metric_value, mock_records, wait_until

KEY = "tg-routed"
PRICES = Path(__file__).resolve().parents[2] / "examples" / "prices.yaml"
POLICIES = """
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {name: routed, namespace: routed}
spec:
  models: {allow: ["gpt-4o*", "claude-*", "fast", "only-claude", "gpt-4-turbo"]}
  limits:
    - {name: rpm, requests: 100000, per: 1m}
    - {name: spend, usd: 1000, per: 30d}
---
apiVersion: tokengate.dev/v1
kind: ModelRoute
metadata: {name: gpt-4o}
spec:
  model: gpt-4o
  backends:
  - {provider: openai, model: gpt-4o}
  - {provider: anthropic, model: claude-sonnet-4-5}
---
apiVersion: tokengate.dev/v1
kind: ModelRoute
metadata: {name: claude-sonnet}
spec:
  model: claude-sonnet-4-5
  backends:
  - {provider: anthropic, model: claude-sonnet-4-5}
  - {provider: openai, model: gpt-4o}
---
apiVersion: tokengate.dev/v1
kind: ModelRoute
metadata: {name: fast}
spec:
  model: fast
  backends: [{provider: openai, model: gpt-4o-mini}]
---
apiVersion: tokengate.dev/v1
kind: ModelRoute
metadata: {name: only-claude}
spec:
  model: only-claude
  backends: [{provider: anthropic, model: claude-sonnet-4-5}]
---
apiVersion: tokengate.dev/v1
kind: ModelRoute
metadata: {name: not-allowed}
spec:
  model: gpt-4-turbo
  backends: [{provider: openai, model: o1-pro}]
"""
FAIL_GPT = {"x-mock-only-model": "gpt-4o"}
FAILURES = {
    "503": {**FAIL_GPT, "x-mock-status": "503"},
    "500": {**FAIL_GPT, "x-mock-status": "500"},
    "429": {**FAIL_GPT, "x-mock-status": "429"},
    "reset": {**FAIL_GPT, "x-mock-fail": "reset"},
}
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]
# examples/prices.yaml, $ per million tokens (input, output)
SONNET = (3.00, 15.00)
GPT_4O = (2.50, 10.00)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("routes")
    policies = root / "policies"
    policies.mkdir()
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    key = (
        "apiVersion: tokengate.dev/v1\nkind: ApiKey\n"
        f"metadata: {{name: client, namespace: routed}}\nspec: {{sha256: {digest}}}\n"
    )
    (policies / "policies.yaml").write_text(POLICIES + "---\n" + key)
    running = LocalStack(
        policy_dir=policies,
        run_dir=root / "run",
        vocab_dir=vocab_dir,
        first_byte_timeout_s=1.0,
        # Failover, not the breaker, is under test here: failures never open it.
        extra_serve_args=("--price-table", str(PRICES), "--breaker-failures", "1000000"),
    ).start()
    yield running
    running.stop()


def _attempts(stack: LocalStack, tag: str) -> list[tuple[str, str]]:
    return [(r["path"], r["model"]) for r in mock_records(stack, tag)]


def _spend(stack: LocalStack, model: str, provider: str) -> float:
    return metric_value(
        stack, "tokengate_spend_usd_micros_total",
        namespace="routed", key="client", model=model, provider=provider,
    )  # fmt: skip


def _micros(price: tuple[float, float], prompt: int, completion: int) -> float:
    return prompt * price[0] + completion * price[1]


def test_a_healthy_primary_serves_and_says_so(stack: LocalStack, tag: str) -> None:
    raw = client(stack, KEY, tag).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES
    )
    answer = raw.parse()
    assert raw.headers["x-tokengate-backend"] == "openai/gpt-4o"
    assert answer.choices[0].message.content
    assert _attempts(stack, tag) == [("/v1/chat/completions", "gpt-4o")]


def test_an_alias_is_served_by_its_backend_model(stack: LocalStack, tag: str) -> None:
    raw = client(stack, KEY, tag).chat.completions.with_raw_response.create(
        model="fast", messages=MESSAGES
    )
    assert raw.headers["x-tokengate-backend"] == "openai/gpt-4o-mini"
    assert raw.parse().model.startswith("gpt-4o-mini")
    assert _attempts(stack, tag) == [("/v1/chat/completions", "gpt-4o-mini")]


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_openai_client_is_served_by_the_anthropic_fallback(
    stack: LocalStack, tag: str, failure: str
) -> None:
    spent = _spend(stack, "claude-sonnet-4-5", "anthropic")
    raw = client(stack, KEY, tag, **FAILURES[failure]).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=30
    )
    answer = raw.parse()
    assert raw.headers["x-tokengate-backend"] == "anthropic/claude-sonnet-4-5"
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    attempts = _attempts(stack, tag)
    assert attempts == [
        ("/v1/chat/completions", "gpt-4o"),
        ("/v1/messages", "claude-sonnet-4-5"),
    ]
    expected = _micros(SONNET, answer.usage.prompt_tokens, answer.usage.completion_tokens)
    assert _spend(stack, "claude-sonnet-4-5", "anthropic") - spent == pytest.approx(expected, 1)


STREAM_FAILURES = {
    "503": FAILURES["503"],
    "no-first-byte": {**FAIL_GPT, "x-mock-delay-ms": "3000"},  # first-byte timeout 1 s
}


@pytest.mark.parametrize("failure", sorted(STREAM_FAILURES))
def test_a_streamed_answer_fails_over_and_streams_in_openai_format(
    stack: LocalStack, tag: str, failure: str
) -> None:
    chat = client(stack, KEY, tag, **STREAM_FAILURES[failure])
    chunks = list(
        chat.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=30, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert _attempts(stack, tag)[-1] == ("/v1/messages", "claude-sonnet-4-5")


def test_a_slow_plain_answer_is_waited_for_not_bought_twice(stack: LocalStack, tag: str) -> None:
    """A plain answer sends its headers only once it is all generated: the first-byte
    timeout (1 s here) is for streams; a 1.5 s plain answer is awaited, not failed over."""
    headers = {**FAIL_GPT, "x-mock-delay-ms": "1500"}
    raw = client(stack, KEY, tag, **headers).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=10
    )
    assert raw.headers["x-tokengate-backend"] == "openai/gpt-4o"
    assert _attempts(stack, tag) == [("/v1/chat/completions", "gpt-4o")]


def test_anthropic_client_is_served_by_the_openai_fallback(stack: LocalStack, tag: str) -> None:
    spent = _spend(stack, "gpt-4o", "openai")
    messages = anthropic_client(stack, KEY, tag, **{"x-mock-only-model": "claude-sonnet-4-5",
                                                    "x-mock-status": "529"}).messages  # fmt: skip
    raw = messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=30, messages=[{"role": "user", "content": "Hi"}]
    )
    answer = raw.parse()
    assert raw.headers["x-tokengate-backend"] == "openai/gpt-4o"
    assert answer.type == "message" and answer.content[0].type == "text"
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert _attempts(stack, tag) == [
        ("/v1/messages", "claude-sonnet-4-5"),
        ("/v1/chat/completions", "gpt-4o"),
    ]
    usage = answer.usage
    prompt = usage.input_tokens + (usage.cache_read_input_tokens or 0)
    expected = _micros(GPT_4O, prompt, usage.output_tokens)
    assert _spend(stack, "gpt-4o", "openai") - spent == pytest.approx(expected, 1)


def test_anthropic_stream_fails_over_to_openai(stack: LocalStack, tag: str) -> None:
    headers = {"x-mock-only-model": "claude-sonnet-4-5", "x-mock-status": "503"}
    with anthropic_client(stack, KEY, tag, **headers).messages.stream(
        model="claude-sonnet-4-5", max_tokens=30, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].type == "text"
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0
    assert _attempts(stack, tag)[-1] == ("/v1/chat/completions", "gpt-4o")


def test_a_failure_after_the_first_byte_is_not_retried(stack: LocalStack, tag: str) -> None:
    """The client has read part of the answer when the provider's connection breaks: the
    stream ends broken, and no other backend is asked. (A break within the attempt's own
    header round trip, before any byte reached the client, is failed over: docs/model-routes.md.)"""
    headers = {**FAIL_GPT, "x-mock-fail": "reset-after-chunks:3", "x-mock-chunk-delay-ms": "200"}
    stream = client(stack, KEY, tag, **headers).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=60, stream=True
    )
    received = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            received.append(chunk)
    assert received, "part of the answer reached the client before the break"
    assert _attempts(stack, tag) == [("/v1/chat/completions", "gpt-4o")]


def test_what_no_backend_can_express_is_refused_before_sending(stack: LocalStack, tag: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(stack, KEY, tag).chat.completions.create(model="only-claude", messages=MESSAGES, n=2)
    assert "n" in caught.value.message
    assert _attempts(stack, tag) == []


def test_an_untranslatable_fallback_is_dropped_not_the_request(stack: LocalStack, tag: str) -> None:
    """n=2 cannot go to Anthropic: the request keeps its OpenAI backend only."""
    with pytest.raises(openai.InternalServerError):
        client(stack, KEY, tag, **FAILURES["503"]).chat.completions.create(
            model="gpt-4o", messages=MESSAGES, n=2
        )
    assert _attempts(stack, tag) == [("/v1/chat/completions", "gpt-4o")]


def test_a_backend_model_the_policy_does_not_allow_is_refused(stack: LocalStack, tag: str) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        client(stack, KEY, tag).chat.completions.create(model="gpt-4-turbo", messages=MESSAGES)
    assert _attempts(stack, tag) == []


def test_client_envoy_control_headers_are_ignored(stack: LocalStack, tag: str) -> None:
    """A client asking Envoy to retry a failed (possibly billed) request gets one attempt."""
    headers = {"x-envoy-retry-on": "5xx", "x-envoy-max-retries": "3", "x-mock-status": "500"}
    with pytest.raises(openai.InternalServerError):
        client(stack, KEY, tag, **headers).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
    assert len(mock_records(stack, tag)) == 1


def test_every_backend_failing_reports_the_last_error(stack: LocalStack, tag: str) -> None:
    headers: dict[str, Any] = {"x-mock-status": "503"}
    with pytest.raises(openai.InternalServerError):
        client(stack, KEY, tag, **headers).chat.completions.create(
            model="gpt-4o", messages=MESSAGES
        )
    assert [path for path, _ in _attempts(stack, tag)] == ["/v1/chat/completions", "/v1/messages"]


def test_anthropic_sdk_error_types_survive_translation(stack: LocalStack, tag: str) -> None:
    headers = {"x-mock-status": "429"}
    with pytest.raises(anthropic.RateLimitError):
        anthropic_client(stack, KEY, tag, **headers).messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )


def test_envoy_replies_after_failover_keep_the_clients_format(stack: LocalStack, tag: str) -> None:
    """Every attempt times out: Envoy answers itself, after the last attempt rewrote the path
    to OpenAI's, and still in the Anthropic client's format."""
    headers = {"x-mock-delay-ms": "3000"}
    with pytest.raises(anthropic.APIStatusError) as caught:
        anthropic_client(stack, KEY, tag, **headers).messages.create(
            model="claude-sonnet-4-5",
            max_tokens=10,
            messages=[{"role": "user", "content": "x"}],
            stream=True,
        )
    assert caught.value.status_code == 504
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "The upstream provider timed out."},
    }
    assert [p for p, _ in _attempts(stack, tag)] == ["/v1/messages", "/v1/chat/completions"]


def test_a_client_cannot_pick_the_attempt(stack: LocalStack, tag: str) -> None:
    """A forged attempt count would make the upstream phase translate for the fallback and
    send it the first backend's request: the sidecar removes it, Envoy sets its own."""
    raw = client(stack, KEY, tag, **{"x-envoy-attempt-count": "2"})
    answer = raw.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert answer.headers["x-tokengate-backend"] == "openai/gpt-4o"
    assert _attempts(stack, tag) == [("/v1/chat/completions", "gpt-4o")]


@pytest.mark.parametrize("stream", [False, True])
def test_a_translated_answer_without_usage_is_charged_not_free(
    stack: LocalStack, tag: str, stream: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """The backend reports no usage: the translated answer must not read as 0 tokens (a
    plain one is charged its reservation, a stream our count)."""
    spent = _used(stack, capsys)
    chat = client(stack, KEY, tag, **{"x-mock-omit-usage": "1"}).chat.completions
    if stream:
        list(chat.create(model="only-claude", messages=MESSAGES, max_tokens=20, stream=True))
    else:
        chat.create(model="only-claude", messages=MESSAGES, max_tokens=20)
    wait_until(lambda: _used(stack, capsys) > spent)


def _used(stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> int:
    """Micro-dollars the namespace's spend limit has counted (`tokengate ctl usage`)."""
    capsys.readouterr()
    code = ctl.main(["--server", f"127.0.0.1:{stack.ports['control']}", "--token-file",
                     str(stack.control_token_file), "-o", "json", "usage", "routed"])  # fmt: skip
    assert code == 0
    limits = json.loads(capsys.readouterr().out)["limits"]
    return int(next(limit["used"] for limit in limits if limit["name"] == "spend"))


def test_a_provider_outage_fails_over_every_concurrent_request(stack: LocalStack, tag: str) -> None:
    """Envoy's default of 3 retries in flight per cluster turned most of these into 503s
    (measured: 32 of 60); the failover clusters lift it."""

    def call(_: int) -> str:
        raw = client(stack, KEY, tag, **FAILURES["503"]).chat.completions.with_raw_response
        return raw.create(model="gpt-4o", messages=MESSAGES, max_tokens=5).headers[
            "x-tokengate-backend"
        ]

    with ThreadPoolExecutor(max_workers=30) as pool:
        served = list(pool.map(call, range(30)))
    assert served == ["anthropic/claude-sonnet-4-5"] * 30
