"""An Anthropic Messages client (`POST /v1/messages`, the `anthropic` SDK) served by OpenAI
Chat Completions (`POST /v1/chat/completions`).

Request (`request.py`, `content.py`):
- `model` is replaced by the route's; `max_tokens` -> `max_completion_tokens`; `temperature`,
  `top_p` as they are; `stop_sequences` -> `stop` (OpenAI takes at most 4: more is refused);
  `stream` -> `stream` plus `stream_options.include_usage` (always: usage must come back);
  `metadata.user_id` -> `user`; `service_tier` "auto" is OpenAI's default; `thinking`
  {"type": "disabled"} is the default too.
- `system` (a string or text blocks) -> a first `system` message.
- user content: text -> text part; image (base64 -> `data:` URL, url -> url) -> `image_url`;
  document: a base64 PDF -> a `file` part {"filename": "document.pdf", "file_data":
  "data:application/pdf;base64,..."} (the shape of the openai SDK's `File` part and OpenAI's
  PDF guide; Chat Completions takes PDFs only), a plain-text source -> a text part with its
  text, a content source -> its text and image parts; a document's `title` / `context`, when
  given, -> one text part before it ("Document title: ...", "Document context: ..."), since
  Claude is shown them as text too.
- tool_result blocks -> `tool` messages (tool_call_id = tool_use_id; a string, or the text
  blocks joined by newlines), placed before the rest of that user turn, in order;
  `is_error: true` has no OpenAI field, so the content starts with "[tool error]" — refusing
  would break every agent loop at the first failing tool, and the model still learns the call
  failed.
- assistant content: text blocks -> `content` (one text as a string, several as text parts),
  tool_use -> `tool_calls` (id, function name, `arguments` = the input as compact JSON). Chat
  Completions has no place for text after a tool call, so such text comes before the calls.
- thinking / redacted_thinking blocks in history are dropped: Anthropic's API itself strips
  earlier turns' thinking from what the model sees, redacted thinking is encrypted for Claude
  only, and the signed reasoning of one model cannot be handed to another (OpenAI does not
  keep its own reasoning between Chat Completions calls either). What was concluded stays in
  the visible text and tool calls, which are kept.
- custom tools {name, description, input_schema, strict} -> function tools {name,
  description, parameters, strict}; tool_choice auto / any / tool / none -> auto / required /
  the named function / none; `disable_parallel_tool_use` -> `parallel_tool_calls: false`.
- dropped, because they change nothing generated: `cache_control` (top level, blocks and
  tools), a tool's `eager_input_streaming`; fields whose value is null.
- refused (`Untranslatable`, naming the field): `thinking` enabled, `top_k`, `container`,
  `mcp_servers`, `context_management`, `output_config`, `service_tier` other than "auto",
  server and Anthropic-defined tools (any tool `type` but "custom"), document citations
  (and assistant text carrying citations), PDFs by URL or file id, non-PDF base64 documents,
  images in tool results, any other block type, a final assistant message (a prefill: Chat
  Completions answers with a new message instead of continuing it), and every field this
  module does not know — all of them listed.

Answer (`answer.py`): choices[0] (the request never asks for n>1) as a Message with the
backend's `chatcmpl-…` id (kept so the two sides' logs match) and reported model; a text block
when the content is not empty, then the `refusal` text if any (what the model said, shown as
text), then tool_use blocks (`input` = the parsed arguments; `{}` when empty, `{"_raw": "..."}`
when not a JSON object). finish_reason stop / length / tool_calls / content_filter ->
end_turn / max_tokens / tool_use / refusal; OpenAI does not say which stop sequence matched,
so a stop sequence reads as end_turn and stop_sequence is always null. Usage: input_tokens =
prompt_tokens - cached_tokens, cache_read_input_tokens = cached_tokens,
cache_creation_input_tokens = 0, output_tokens = completion_tokens (reasoning included, as
Anthropic counts thinking). A malformed answer never raises: what is missing or of the wrong
type reads as absent (no choice: empty content, stop_reason end_turn; no usage: zero counts).

Stream (`stream.py`): see there. message_start carries input_tokens 0 (unknown until OpenAI's
last chunk); message_delta carries the whole usage — the anthropic SDK's accumulator (2.12)
overwrites input and cache counts from message_delta when present, and tokengate's
`AnthropicStreamReader` folds message_delta's counts in by max. message_delta waits for
OpenAI's usage chunk (it follows finish_reason); a `[DONE]` without one ends the message with
zero counts (OpenAI always sends it when asked, as the request does). An in-stream OpenAI
error -> an `error` event and nothing after it; a stream that ends (`close()`) before it was
complete -> one `error` event (api_error), so the SDK raises rather than hand over a message
silently cut short — no content, stop reason or usage is invented. Chunks that are not JSON
objects are skipped; an event over the SSE parser's bound ends the stream with an `error` event.

Errors (`answer.error`): the status kept, Anthropic's error type chosen by status
(`answer.error_type`, on `anthropic.ERROR_TYPES`), OpenAI's message; a body that is not
OpenAI's error JSON -> "the backend answered HTTP <status>" with at most an 80-character
printable excerpt of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from extproc.providers.translate.messages_over_chat import answer
from extproc.providers.translate.messages_over_chat.request import chat_request
from extproc.providers.translate.messages_over_chat.stream import MessagesStream


class MessagesOverChat:
    client = "anthropic"
    backend = "openai"
    backend_path = "/v1/chat/completions"

    def request(
        self, body: Mapping[str, Any], *, model: str, default_max_tokens: int
    ) -> dict[str, Any]:
        return chat_request(body, model=model, default_max_tokens=default_max_tokens)

    def answer(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return answer.message(body)

    def stream(self, *, include_usage: bool) -> MessagesStream:
        """`include_usage` changes nothing: an Anthropic stream always carries usage."""
        return MessagesStream()

    def error(self, status: int, body: bytes) -> tuple[int, bytes]:
        return answer.error(status, body)


TRANSLATION = MessagesOverChat()
