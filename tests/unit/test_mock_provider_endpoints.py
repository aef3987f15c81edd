"""The mock provider's Responses, legacy Completions and Embeddings endpoints, and the
scripted usage every dialect shares (`n`, reasoning and cached tokens), through its router.

Token counts are checked against tiktoken directly, so a wrong prompt formula fails here.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from extproc.dev.mock_provider.http import Reply
from extproc.dev.mock_provider.parser import Request
from extproc.dev.mock_provider.recorder import Recorder, Stats
from extproc.dev.mock_provider.router import Router
from extproc.dev.mock_provider.script import script_from
from extproc.dev.mock_provider.text import plan
from tests.token_counts import ntok

pytestmark = pytest.mark.usefixtures("vocab_dir")
O200K = "o200k_base"
ROLE = 1  # "developer", "user": one token each, counted as OpenAI's chat framing counts roles
CL100K = "cl100k_base"


def call(path: str, body: object, **script: str) -> Reply:
    headers = [(f"x-mock-{name.replace('_', '-')}", value) for name, value in script.items()]
    raw = json.dumps(body).encode()
    reply = Router(stats=Stats(), recorder=Recorder(), require_key=None).handle(
        Request("POST", path, "", "HTTP/1.1", headers, raw)
    )
    assert isinstance(reply, Reply)
    return reply


def answer(path: str, body: object, **script: str) -> dict[str, Any]:
    reply = call(path, body, **script)
    assert reply.status == 200, reply.body
    result: dict[str, Any] = json.loads(reply.body)
    return result


def events(reply: Reply) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) of every SSE event of a streamed reply."""
    assert reply.stream is not None
    out: list[tuple[str | None, Any]] = []
    for raw in reply.stream:
        name, data = None, ""
        for line in raw.decode().rstrip("\n").split("\n"):
            key, _, value = line.partition(": ")
            name, data = (value, data) if key == "event" else (name, value)
        out.append((name, data if data == "[DONE]" else json.loads(data)))
    return out


@pytest.mark.parametrize(
    ("requested", "reasoning", "cap", "expected"),
    [
        (None, 0, None, (16, 0, False)),
        (10, 50, None, (10, 50, False)),
        (10, 50, 100, (10, 50, False)),
        (10, 50, 55, (5, 50, True)),
        (10, 50, 30, (0, 30, True)),
    ],
)
def test_the_cap_bounds_reasoning_first_then_the_answer(
    requested: int | None, reasoning: int, cap: int | None, expected: tuple[int, int, bool]
) -> None:
    assert plan(requested=requested, reasoning=reasoning, max_tokens=cap) == expected


def test_script_reads_reasoning_and_cached_tokens() -> None:
    headers = [("x-mock-reasoning-tokens", "500"), ("x-mock-cached-tokens", "7")]
    script = script_from(Request("POST", "/", "", "HTTP/1.1", headers, b""))
    assert (script.reasoning_tokens, script.cached_tokens) == (500, 7)
    bad = Request("POST", "/", "", "HTTP/1.1", [("x-mock-reasoning-tokens", "-1")], b"")
    with pytest.raises(Exception, match="x-mock-reasoning-tokens"):
        script_from(bad)


# -- Responses ----------------------------------------------------------------------------

RESPONSES = "/v1/responses"


def test_responses_plain_usage_reasoning_and_cache() -> None:
    body = {"model": "gpt-4o", "instructions": "Be brief.", "input": "Name a river."}
    got = answer(RESPONSES, body, completion_tokens="12", reasoning_tokens="30", cached_tokens="5")
    prompt = ntok("Be brief.", O200K) + ntok("Name a river.", O200K) + 2 * (3 + ROLE) + 3
    assert got["object"] == "response" and got["status"] == "completed"
    assert got["usage"] == {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 5},
        "output_tokens": 42,
        "output_tokens_details": {"reasoning_tokens": 30},
        "total_tokens": prompt + 42,
    }
    reasoning, message = got["output"]
    assert reasoning["type"] == "reasoning" and message["type"] == "message"
    assert ntok(message["content"][0]["text"], O200K) == 12


def test_responses_items_tools_and_a_cap_that_truncates() -> None:
    tools = [{"type": "function", "name": "f", "parameters": {}}]
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Hi there"}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": '{"a":1}'},
        {"type": "function_call_output", "call_id": "c", "output": "ok"},
    ]
    body = {"model": "gpt-4o", "input": items, "tools": tools, "max_output_tokens": 16}
    got = answer(RESPONSES, body, completion_tokens="40")
    texts = ["user", "Hi there", "f", '{"a":1}', "ok", json.dumps(tools, separators=(",", ":"))]
    assert got["usage"]["input_tokens"] == sum(ntok(t, O200K) for t in texts) + 3 * 3 + 3
    assert got["usage"]["output_tokens"] == 16
    assert (got["status"], got["incomplete_details"]) == (
        "incomplete",
        {"reason": "max_output_tokens"},
    )


def test_a_previous_response_s_context_is_billed_again() -> None:
    first = answer(RESPONSES, {"model": "gpt-4o", "input": "One."}, completion_tokens="20")
    context = first["usage"]["input_tokens"] + 20
    second = answer(
        RESPONSES, {"model": "gpt-4o", "input": "Two.", "previous_response_id": first["id"]}
    )
    assert second["usage"]["input_tokens"] == context + ntok("Two.", O200K) + ROLE + 3 + 3
    thought = answer(RESPONSES, {"model": "gpt-4o", "input": "x"}, reasoning_tokens="9")
    chained = {"model": "gpt-4o", "input": "x", "previous_response_id": thought["id"]}
    visible = thought["usage"]["output_tokens"] - 9  # reasoning is not carried forward
    expected = thought["usage"]["input_tokens"] + visible + ntok("x", O200K) + ROLE + 3 + 3
    assert answer(RESPONSES, chained)["usage"]["input_tokens"] == expected


@pytest.mark.parametrize(
    "body",
    [
        {"model": "gpt-4o"},
        {"model": "gpt-4o", "input": 5},
        {"model": "gpt-4o", "input": ["x"]},
        {"model": "gpt-4o", "input": "x", "max_output_tokens": 15},
        {"model": "gpt-4o", "input": "x", "previous_response_id": "resp_unknown"},
    ],
)
def test_responses_refusals_are_openai_400s(body: dict[str, Any]) -> None:
    reply = call(RESPONSES, body)
    assert reply.status == 400
    assert json.loads(reply.body)["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("omit", [False, True])
def test_responses_stream_events(omit: bool) -> None:
    body = {"model": "gpt-4o", "input": "hi", "stream": True}
    script = {"completion_tokens": "5", "reasoning_tokens": "3", "tokens_per_chunk": "2"}
    got = events(call(RESPONSES, body, **script, **({"omit_usage": "1"} if omit else {})))
    names = [name for name, _ in got]
    assert names == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.output_item.done",  # the reasoning item
        "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [data["type"] for _, data in got] == names
    assert [data["sequence_number"] for _, data in got] == list(range(len(got)))
    deltas = [data["delta"] for name, data in got if name == "response.output_text.delta"]
    assert [ntok(d, O200K) for d in deltas] == [2, 2, 1]
    done = got[-4][1]
    assert done["text"] == "".join(deltas)
    final = got[-1][1]["response"]
    assert final["usage"] is None if omit else final["usage"]["output_tokens"] == 8


# -- legacy Completions -------------------------------------------------------------------

COMPLETIONS = "/v1/completions"
INSTRUCT = "gpt-3.5-turbo-instruct"


@pytest.mark.parametrize(
    ("prompt", "texts", "token_ids"),
    [
        ("Say hi", ["Say hi"], 0),
        (["a b", "c"], ["a b", "c"], 0),
        ([1, 2, 3], [], 3),
        ([[1, 2], [3]], [], 3),
    ],
)
def test_completions_prompt_forms_and_the_default_cap(
    prompt: object, texts: list[str], token_ids: int
) -> None:
    got = answer(COMPLETIONS, {"model": INSTRUCT, "prompt": prompt}, completion_tokens="40")
    batch = len(prompt) if isinstance(prompt, list) and not isinstance(prompt[0], int) else 1
    assert got["object"] == "text_completion" and len(got["choices"]) == batch
    assert got["usage"]["prompt_tokens"] == sum(ntok(t, CL100K) for t in texts) + token_ids
    assert got["usage"]["completion_tokens"] == 16 * batch  # the legacy default max_tokens
    assert {c["finish_reason"] for c in got["choices"]} == {"length"}


def test_completions_n_and_best_of_bill_every_generated_choice() -> None:
    body = {"model": INSTRUCT, "prompt": ["a", "b"], "n": 2, "best_of": 3, "max_tokens": 50}
    got = answer(COMPLETIONS, body, completion_tokens="7")
    assert [c["index"] for c in got["choices"]] == [0, 1, 2, 3]
    assert all(ntok(c["text"], CL100K) == 7 for c in got["choices"])
    assert len({c["text"] for c in got["choices"]}) == 4  # distinct choices
    assert got["usage"]["completion_tokens"] == 2 * 3 * 7


@pytest.mark.parametrize("include_usage", [False, True])
def test_completions_stream_chunks(include_usage: bool) -> None:
    body: dict[str, Any] = {"model": INSTRUCT, "prompt": "x", "stream": True, "n": 2}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    got = events(call(COMPLETIONS, body, completion_tokens="3", tokens_per_chunk="2"))
    assert got[-1] == (None, "[DONE]")
    chunks = [data for _, data in got[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert all(("usage" in c) is include_usage for c in chunks)
    texts = {i: "".join(c["choices"][0]["text"] for c in chunks if c["choices"] and
                        c["choices"][0]["index"] == i) for i in (0, 1)}  # fmt: skip
    assert [ntok(texts[i], CL100K) for i in (0, 1)] == [3, 3]
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


@pytest.mark.parametrize(
    "body",
    [
        {"model": INSTRUCT},
        {"model": INSTRUCT, "prompt": []},
        {"model": INSTRUCT, "prompt": ["a", 1]},
        {"model": INSTRUCT, "prompt": "x", "n": 3, "best_of": 2},
        {"model": INSTRUCT, "prompt": "x", "stream_options": {"include_usage": True}},
    ],
)
def test_completions_refusals(body: dict[str, Any]) -> None:
    assert call(COMPLETIONS, body).status == 400


# -- Embeddings and chat's `n` ------------------------------------------------------------


def test_embeddings_float_and_base64() -> None:
    model = "text-embedding-3-small"
    got = answer("/v1/embeddings", {"model": model, "input": ["hello world", "rivers"]})
    prompt = ntok("hello world", CL100K) + ntok("rivers", CL100K)
    assert got["usage"] == {"prompt_tokens": prompt, "total_tokens": prompt}
    assert [len(d["embedding"]) for d in got["data"]] == [1536, 1536]
    assert abs(sum(v * v for v in got["data"][0]["embedding"]) - 1) < 1e-9
    body = {"model": model, "input": [[1, 2, 3]], "encoding_format": "base64", "dimensions": 8}
    packed = answer("/v1/embeddings", body)
    (vector,) = [base64.b64decode(d["embedding"]) for d in packed["data"]]
    assert len(struct.unpack("<8f", vector)) == 8 and packed["usage"]["prompt_tokens"] == 3
    bad: object
    for bad in ("", [""], None, [[]]):
        assert call("/v1/embeddings", {"model": model, "input": bad}).status == 400


def test_chat_n_reasoning_and_cached_tokens() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "n": 3}
    got = answer("/v1/chat/completions", body, completion_tokens="4", reasoning_tokens="10",
                 cached_tokens="100")  # fmt: skip
    assert [c["index"] for c in got["choices"]] == [0, 1, 2]
    usage = got["usage"]
    assert usage["completion_tokens"] == 3 * (4 + 10)
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 30
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"]  # at most all


def test_anthropic_cached_tokens_are_read_from_the_cache_not_input() -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 50,
            "messages": [{"role": "user", "content": "hello there"}]}  # fmt: skip
    usage = answer("/v1/messages", body, cached_tokens="2", reasoning_tokens="5")["usage"]
    prompt = ntok("hello there", CL100K) + 3
    assert (usage["input_tokens"], usage["cache_read_input_tokens"]) == (prompt - 2, 2)
    assert usage["output_tokens"] == 16 + 5
