"""Anthropic Messages requests served by OpenAI Chat Completions
(`extproc.providers.translate.messages_over_chat`): the request translation. A corpus of
requests with the Chat Completions body each must become (written by hand from both APIs'
references), every refused field refused by name, and malformed input a BadRequest."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from extproc.errors import BadRequest
from extproc.providers.anthropic import parse_messages_request
from extproc.providers.translate import Translation, Untranslatable
from extproc.providers.translate.messages_over_chat import TRANSLATION
from extproc.providers.translate.messages_over_chat.content import TOOL_ERROR_MARK

FIXTURES = Path(__file__).parent / "fixtures" / "translate" / "messages_over_chat"
CASES: list[dict[str, Any]] = json.loads((FIXTURES / "requests.json").read_text())
PNG = "iVBORw0KGgo="


def translate(body: dict[str, Any], *, default_max_tokens: int = 4096) -> dict[str, Any]:
    return TRANSLATION.request(body, model="gpt-4o", default_max_tokens=default_max_tokens)


def base(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    body.update(fields)
    return body


def user(*blocks: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


def test_it_is_the_translation_for_anthropic_clients_on_openai_chat() -> None:
    translation: Translation = TRANSLATION
    assert (translation.client, translation.backend) == ("anthropic", "openai")
    assert translation.backend_path == "/v1/chat/completions"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_corpus(case: dict[str, Any]) -> None:
    original = copy.deepcopy(case["anthropic"])
    parse_messages_request(case["anthropic"])  # a request tokengate itself accepts
    assert translate(case["anthropic"]) == case["openai"]
    assert case["anthropic"] == original  # the client's body is not touched


def test_model_is_the_routes_and_the_cap_defaults_when_absent() -> None:
    body = base()
    del body["max_tokens"]
    out = TRANSLATION.request(body, model="gpt-4.1-mini", default_max_tokens=777)
    assert out["model"] == "gpt-4.1-mini"
    assert out["max_completion_tokens"] == 777
    assert "max_tokens" not in out


def test_streaming_always_asks_for_usage() -> None:
    out = translate(base(stream=True))
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}
    assert "stream" not in translate(base(stream=False))


def test_tool_results_come_before_the_rest_of_their_turn_in_order() -> None:
    messages = [
        {"role": "user", "content": "Go"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "t1", "name": "a", "input": {}},
                {"type": "tool_use", "id": "t2", "name": "b", "input": {"x": [1, 2]}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "before"},
                {"type": "tool_result", "tool_use_id": "t1", "content": "one"},
                {"type": "text", "text": "between"},
                {"type": "tool_result", "tool_use_id": "t2", "content": "two"},
            ],
        },
    ]
    out = translate(base(messages=messages))["messages"]
    assert [m["role"] for m in out] == ["user", "assistant", "tool", "tool", "user"]
    assert [m.get("tool_call_id") for m in out[2:4]] == ["t1", "t2"]
    assert out[1]["tool_calls"][1]["function"]["arguments"] == '{"x":[1,2]}'
    assert out[4]["content"] == [
        {"type": "text", "text": "before"},
        {"type": "text", "text": "between"},
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("boom", f"{TOOL_ERROR_MARK} boom"),
        (None, TOOL_ERROR_MARK),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], f"{TOOL_ERROR_MARK} a\nb"),
    ],
)
def test_a_failed_tool_is_marked_in_the_text(content: object, expected: str) -> None:
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": "t1", "is_error": True}
    if content is not None:
        result["content"] = content
    out = translate(base(messages=user(result)))["messages"]
    assert out == [{"role": "tool", "tool_call_id": "t1", "content": expected}]


def test_assistant_text_after_a_tool_call_keeps_its_order_among_texts() -> None:
    messages = [
        {"role": "user", "content": "Go"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "first"},
                {"type": "tool_use", "id": "t1", "name": "a", "input": {}},
                {"type": "text", "text": "second"},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
    ]
    assistant = translate(base(messages=messages))["messages"][1]
    assert assistant["content"] == [
        {"type": "text", "text": "first"},
        {"type": "text", "text": "second"},
    ]
    assert [c["id"] for c in assistant["tool_calls"]] == ["t1"]


def test_null_fields_are_absent() -> None:
    out = translate(base(system=None, temperature=None, top_k=None, metadata=None, tools=None))
    assert out == translate(base())


# -- refused -------------------------------------------------------------------------------


def thinking_history() -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "s"}]},
        {"role": "user", "content": "more"},
    ]


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("thinking", base(thinking={"type": "enabled", "budget_tokens": 2048}), "thinking"),
    ("thinking_adaptive", base(thinking={"type": "adaptive"}), "thinking"),
    ("top_k", base(top_k=40), "top_k"),
    ("container", base(container="container_01"), "container"),
    ("mcp_servers", base(mcp_servers=[{"type": "url", "url": "https://m.example"}]), "mcp_servers"),
    ("context_management", base(context_management={"edits": []}), "context_management"),
    ("output_config", base(output_config={"effort": "low"}), "output_config"),
    ("service_tier", base(service_tier="standard_only"), "service_tier"),
    ("unknown_top_level", base(zeta=1, alpha=True), "alpha"),
    ("five_stops", base(stop_sequences=["a", "b", "c", "d", "e"]), "stop_sequences"),
    (
        "server_tool",
        base(tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]),
        "tools[0].type",
    ),
    (
        "anthropic_defined_tool",
        base(tools=[{"type": "bash_20250124", "name": "bash"}]),
        "tools[0].type",
    ),
    (
        "tool_unknown_field",
        base(tools=[{"name": "f", "input_schema": {"type": "object"}, "input_examples": [{}]}]),
        "tools[0].input_examples",
    ),
    (
        "tool_choice_unknown_field",
        base(
            tools=[{"name": "f", "input_schema": {"type": "object"}}],
            tool_choice={"type": "auto", "bias": 1},
        ),
        "tool_choice.bias",
    ),
    ("metadata_unknown", base(metadata={"user_id": "u", "team": "x"}), "metadata.team"),
    (
        "prefill",
        base(messages=[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A:"}]),
        "messages[1]",
    ),
    (
        "message_field",
        base(messages=[{"role": "user", "content": "Q", "name": "bob"}]),
        "messages[0].name",
    ),
    (
        "document_citations",
        base(
            messages=user(
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": "d"},
                    "citations": {"enabled": True},
                }
            )
        ),
        "messages[0].content[0].citations",
    ),
    (
        "pdf_by_url",
        base(
            messages=user({"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}})
        ),
        "messages[0].content[0].source",
    ),
    (
        "document_by_file_id",
        base(messages=user({"type": "document", "source": {"type": "file", "file_id": "file_01"}})),
        "messages[0].content[0].source",
    ),
    (
        "image_by_file_id",
        base(messages=user({"type": "image", "source": {"type": "file", "file_id": "file_01"}})),
        "messages[0].content[0].source",
    ),
    (
        "non_pdf_base64_document",
        base(
            messages=user(
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "text/csv", "data": "YSxi"},
                }
            )
        ),
        "messages[0].content[0].source.media_type",
    ),
    (
        "image_in_tool_result",
        base(
            messages=user(
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": [
                        {"type": "text", "text": "chart:"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                    ],
                }
            )
        ),
        "messages[0].content[0].content[1]",
    ),
    (
        "search_result_block",
        base(
            messages=user(
                {"type": "search_result", "source": "s", "title": "t", "content": []},
            )
        ),
        "messages[0].content[0]",
    ),
    (
        "assistant_citations",
        base(
            messages=[
                {"role": "user", "content": "Q"},
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "A", "citations": [{"type": "x"}]}],
                },
                {"role": "user", "content": "more"},
            ]
        ),
        "messages[1].content[0].citations",
    ),
    (
        "server_tool_use_in_history",
        base(
            messages=[
                {"role": "user", "content": "Q"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {}}
                    ],
                },
                {"role": "user", "content": "more"},
            ]
        ),
        "messages[1].content[0]",
    ),
    (
        "image_block_field",
        base(
            messages=user(
                {
                    "type": "image",
                    "source": {"type": "url", "url": "https://x/i.png"},
                    "detail": "low",
                }
            )
        ),
        "messages[0].content[0].detail",
    ),
]


@pytest.mark.parametrize(("body", "param"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_by_name(body: dict[str, Any], param: str) -> None:
    with pytest.raises(Untranslatable) as caught:
        translate(body)
    assert caught.value.param == param
    assert caught.value.status == 400
    parent, _, leaf = param.rpartition(".")
    assert any(name in caught.value.message for name in (param, f"'{leaf}'", f"'{parent}'"))


def test_every_unknown_field_is_listed() -> None:
    with pytest.raises(Untranslatable) as caught:
        translate(base(zeta=1, alpha=True, beta="b"))
    assert "'alpha', 'beta', 'zeta'" in caught.value.message


def test_thinking_in_history_is_dropped_not_refused() -> None:
    out = translate(base(messages=thinking_history()))["messages"]
    assert out[1] == {"role": "assistant", "content": ""}


# -- malformed -----------------------------------------------------------------------------

MALFORMED: list[tuple[str, dict[str, Any]]] = [
    ("messages_not_a_list", base(messages={"role": "user"})),
    ("messages_empty", base(messages=[])),
    ("message_not_an_object", base(messages=["hi"])),
    ("bad_role", base(messages=[{"role": "system", "content": "x"}])),
    ("content_not_blocks", base(messages=[{"role": "user", "content": 7}])),
    ("block_not_an_object", base(messages=[{"role": "user", "content": ["x"]}])),
    ("text_not_a_string", base(messages=user({"type": "text", "text": 3}))),
    ("image_without_source", base(messages=user({"type": "image"}))),
    ("image_without_data", base(messages=user({"type": "image", "source": {"type": "base64"}}))),
    ("tool_result_without_id", base(messages=user({"type": "tool_result", "content": "x"}))),
    (
        "tool_use_input_not_an_object",
        base(
            messages=[
                {"role": "user", "content": "Q"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "f", "input": [1]}],
                },
                {"role": "user", "content": "x"},
            ]
        ),
    ),
    ("system_not_blocks", base(system=5)),
    ("system_block_not_text", base(system=[{"type": "image", "source": {}}])),
    ("stop_sequences_not_strings", base(stop_sequences=[1])),
    ("tools_not_a_list", base(tools={"name": "f"})),
    ("tool_not_an_object", base(tools=["f"])),
    ("tool_choice_unknown_type", base(tool_choice={"type": "sometimes"})),
    ("tool_choice_any_without_tools", base(tool_choice={"type": "any"})),
    ("metadata_not_an_object", base(metadata="u")),
    ("user_id_not_a_string", base(metadata={"user_id": 5})),
]


@pytest.mark.parametrize("body", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_is_a_bad_request(body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as caught:
        translate(body)
    assert caught.value.status == 400
    assert caught.value.param
