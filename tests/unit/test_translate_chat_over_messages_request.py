"""`chat_over_messages.request`: OpenAI chat requests as Anthropic Messages requests.

A corpus of requests with the Anthropic request each must become (written by hand, not by the
code under test), every refused field with the parameter it names, malformed requests as
BadRequest; the output checked against the anthropic SDK's request types and read by the
gateway's own Anthropic request parser; the bodies the real openai SDK sends translated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from anthropic.types import (
    DocumentBlockParam,
    ImageBlockParam,
    MetadataParam,
    TextBlockParam,
    ToolChoiceAnyParam,
    ToolChoiceAutoParam,
    ToolChoiceNoneParam,
    ToolChoiceToolParam,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlockParam,
)
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from pydantic import TypeAdapter

from extproc.errors import BadRequest
from extproc.providers.anthropic import parse_messages_request
from extproc.providers.translate import Translation, Untranslatable
from extproc.providers.translate.chat_over_messages import TRANSLATION

FIXTURES = Path(__file__).parent / "fixtures" / "translate" / "chat_over_messages"
CASES: list[dict[str, Any]] = json.loads((FIXTURES / "requests.json").read_text())
REFUSALS: dict[str, list[dict[str, Any]]] = json.loads((FIXTURES / "refused.json").read_text())
MODEL = "claude-sonnet-4-5"
BASE: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}
BLOCKS: dict[str, Any] = {
    "text": TextBlockParam,
    "image": ImageBlockParam,
    "document": DocumentBlockParam,
    "tool_use": ToolUseBlockParam,
    "tool_result": ToolResultBlockParam,
}
CHOICES: dict[str, Any] = {
    "auto": ToolChoiceAutoParam,
    "any": ToolChoiceAnyParam,
    "tool": ToolChoiceToolParam,
    "none": ToolChoiceNoneParam,
}


def check_shape(value: dict[str, Any], typed: Any) -> None:
    """`value` has only fields the anthropic SDK's TypedDict declares, and pydantic validates
    it against that type (Literal values, required fields; nested `Iterable`s are validated
    lazily by pydantic, so the caller checks those itself)."""
    declared = typed.__required_keys__ | typed.__optional_keys__
    assert set(value) <= declared, (typed.__name__, set(value) - declared)
    TypeAdapter(typed).validate_python(value)


# The wire API still takes these on models with sampling; anthropic SDK 1.x dropped them from
# its request types (Claude Opus 4.7 and later refuse them).
SAMPLING = ("temperature", "top_p")


def check_anthropic_request(request: dict[str, Any]) -> None:
    top = {k: v for k, v in request.items() if k != "stream" and k not in SAMPLING}
    check_shape(top, MessageCreateParamsNonStreaming)
    for field in SAMPLING:
        value = request.get(field, 0.5)
        assert isinstance(value, float | int) and 0 <= value < 1, (field, value)
    for block in request.get("system", []):
        check_shape(block, TextBlockParam)
    for message in request["messages"]:
        assert set(message) == {"role", "content"} and message["role"] in ("user", "assistant")
        assert message["content"], "Anthropic refuses empty turns"
        for block in message["content"]:
            check_shape(block, BLOCKS[block["type"]])
            inner = block.get("content") if block["type"] == "tool_result" else None
            for text in inner if isinstance(inner, list) else []:
                check_shape(text, TextBlockParam)
    for tool in request.get("tools", []):
        check_shape(tool, ToolParam)
    if "tool_choice" in request:
        check_shape(request["tool_choice"], CHOICES[request["tool_choice"]["type"]])
    if "metadata" in request:
        check_shape(request["metadata"], MetadataParam)


def translate(body: dict[str, Any]) -> dict[str, Any]:
    return TRANSLATION.request(body, model=MODEL, default_max_tokens=4096)


def test_the_translation_names_its_pair() -> None:
    translation: Translation = TRANSLATION
    assert (translation.client, translation.backend, translation.backend_path) == (
        "openai",
        "anthropic",
        "/v1/messages",
    )


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_corpus_translates_to_the_expected_anthropic_request(case: dict[str, Any]) -> None:
    original = json.dumps(case["openai"])
    assert translate(case["openai"]) == case["anthropic"]
    assert json.dumps(case["openai"]) == original  # the client's body is not changed


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_output_is_a_valid_anthropic_request_the_gateway_reads(case: dict[str, Any]) -> None:
    out = translate(case["openai"])
    check_anthropic_request(out)
    parsed = parse_messages_request(out)
    assert (parsed.model, parsed.max_output_tokens, parsed.stream) == (
        MODEL,
        out["max_tokens"],
        out.get("stream", False),
    )
    texts = [b["text"] for m in out["messages"] for b in m["content"] if b["type"] == "text"]
    assert set(texts) <= set(parsed.prompt_texts)


@pytest.mark.parametrize("case", REFUSALS["refused"], ids=[c["name"] for c in REFUSALS["refused"]])
def test_what_anthropic_cannot_express_is_refused_naming_the_field(case: dict[str, Any]) -> None:
    with pytest.raises(Untranslatable) as caught:
        translate({**BASE, **case["fields"]})
    assert caught.value.param == case["param"]
    assert (caught.value.status, caught.value.code) == (400, "untranslatable_for_backend")


@pytest.mark.parametrize(
    "case", REFUSALS["bad_request"], ids=[c["name"] for c in REFUSALS["bad_request"]]
)
def test_malformed_requests_are_bad_requests(case: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as caught:
        translate({**BASE, **case["fields"]})
    assert not isinstance(caught.value, Untranslatable)
    assert caught.value.param == case["param"]


def test_every_unknown_field_is_named_in_the_refusal() -> None:
    fields = {f"x_{i}": i for i in range(10)}
    with pytest.raises(Untranslatable) as caught:
        translate({**BASE, **fields})
    message = caught.value.message
    assert all(f"'x_{i}'" in message for i in range(8))
    assert "and 2 more" in message


@pytest.mark.parametrize("temperature", [0, 0.0, 0.7, 0.999])
def test_temperatures_below_1_pass_unchanged(temperature: float) -> None:
    assert translate({**BASE, "temperature": temperature})["temperature"] == temperature


@pytest.mark.parametrize("field", ["temperature", "top_p"])
@pytest.mark.parametrize("value", [1, 1.0])
def test_the_shared_sampling_default_is_not_sent(field: str, value: float) -> None:
    """1 is both APIs' default: sending it changes nothing but fails on the models that no
    longer take sampling parameters."""
    assert field not in translate({**BASE, field: value})


def test_image_media_type_falls_back_to_the_declared_one() -> None:
    """Bytes that name no known type (here not even an image) keep the URL's media type."""
    url = "data:image/webp;base64,AAAAAAAAAAAAAAAA"
    out = translate({**BASE, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}
    ]}]})  # fmt: skip
    source = out["messages"][0]["content"][0]["source"]
    assert (source["media_type"], source["data"]) == ("image/webp", "AAAAAAAAAAAAAAAA")


def test_raw_base64_pdf_without_data_url_is_a_document() -> None:
    pdf = "JVBERi0xLjQK"  # "%PDF-1.4\n"
    out = translate({**BASE, "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_data": pdf}}
    ]}]})  # fmt: skip
    assert out["messages"][0]["content"] == [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                        "data": pdf}}
    ]  # fmt: skip


def test_requests_the_openai_sdk_sends_are_translated() -> None:
    """The real SDK builds the bodies (its serialisation of params, tools and parts); each is
    translated on the mock transport, and the SDK gets a translated answer back."""
    seen: list[dict[str, Any]] = []
    answer = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": MODEL,
        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1},
    }  # fmt: skip

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(translate(json.loads(request.content)))
        return httpx2.Response(200, json=TRANSLATION.answer(answer))

    client = openai.OpenAI(
        api_key="k",
        base_url="http://gateway.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    completion = client.chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ]},
        ],
        max_completion_tokens=64,
        temperature=0.2,
        stop=["\n\n"],
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {
            "type": "object", "properties": {"q": {"type": "string"}}}}}],
        tool_choice="auto",
        user="u-1",
    )  # fmt: skip
    assert completion.choices[0].message.content == "ok"
    check_anthropic_request(seen[0])
    assert seen == [
        {
            "model": MODEL,
            "max_tokens": 64,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            ]}],
            "temperature": 0.2,
            "stop_sequences": ["\n\n"],
            "tools": [{"name": "lookup", "input_schema": {
                "type": "object", "properties": {"q": {"type": "string"}}}}],
            "tool_choice": {"type": "auto"},
            "metadata": {"user_id": "u-1"},
        }
    ]  # fmt: skip
