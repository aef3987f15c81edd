"""An OpenAI Chat Completions client (`POST /v1/chat/completions`) served by Anthropic Messages
(`POST /v1/messages`).

Request (`request`), field by field:
- `model` is replaced by the backend's model; `max_completion_tokens` (else `max_tokens`) is
  `max_tokens`, `default_max_tokens` when neither is given (Anthropic requires one);
- `temperature` is sent as is when below 1 (Anthropic's range is 0..1; above is refused),
  `top_p` as is when below 1; at 1, the default of both APIs, neither is sent (the models
  that dropped sampling parameters, Claude Opus 4.7 and later, refuse even a default value;
  any other value reaches them and they answer 400 themselves); `stop` (a string or a list)
  as `stop_sequences`, `stream` as is;
- `tools` (function tools only): name, description, `parameters` as `input_schema` (none: an
  object schema without properties), `strict: true` as Anthropic's strict tool use;
  `tool_choice` auto / none / required / a named function as auto / none / any / tool, and
  `parallel_tool_calls: false` as `disable_parallel_tool_use`;
- `safety_identifier` or `user` as `metadata.user_id` (both, different: refused);
- accepted and not sent, since they change nothing generated: `stream_options` (Anthropic
  always reports usage; the stream translator adds the usage chunk when it was asked for),
  `store` and `metadata` (no copy is kept at OpenAI), the prompt-cache fields; `image_url`'s
  `detail` (Anthropic has no such choice and sizes images itself);
- refused unless at the value that asks for nothing: `n` > 1, `logprobs`, `top_logprobs`,
  `logit_bias`, presence and frequency penalties, `seed`, `response_format` other than text
  (Anthropic has no JSON mode; its structured outputs take a schema but not OpenAI's `name`
  and `description`, which OpenAI shows the model, and only some models take it: not
  translated), `audio` and audio `modalities`, `prediction`, `reasoning_effort` other than
  "none" (Anthropic's thinking budget is no equivalent; "none" is what a request without
  thinking is), `verbosity`, `web_search_options`, `service_tier` other than auto/default,
  `moderation`, legacy `functions` / `function_call`;
- any other top-level field with a value is refused, all of them named (default deny).

Messages:
- system and developer messages before the first turn become `system` text blocks, in order.
  One after the conversation started is refused: Anthropic has no system turn, and moving it
  to the top would change what it applies to (an instruction given at turn 7 would govern
  turns 1-6 too);
- user content: text; `image_url` with a base64 data URL as a base64 image (the media type
  read from the image's bytes when they name one, as OpenAI reads them, else the URL's; only
  JPEG, PNG, GIF and WebP), an http(s) URL as a url image; a `file` part with a PDF in
  `file_data` as a base64 document block titled with its filename (shape checked against the
  anthropic SDK's `DocumentBlockParam` / `Base64PDFSourceParam`); a file id, a file that is
  not a PDF, `input_audio` and unknown part types are refused;
- assistant content (text and refusal parts, the `refusal` field: what it said) as text
  blocks, then each tool call as a `tool_use` block (its `arguments` must be a JSON object
  string; "" is no arguments);
- tool messages as `tool_result` blocks in a user turn; consecutive turns of one role are
  merged (tool results and the user message after them become one user turn, as Anthropic
  requires and would itself do);
- `name` on a message is refused: Anthropic has no participants, and dropping the name would
  hide from the model who said what; an empty `name` or `annotations` says nothing;
- empty text parts are left out (Anthropic refuses empty text blocks; they say nothing);
- a conversation ending with an assistant message is refused: Anthropic would continue that
  message (prefill) where OpenAI answers with a new one; one with no user or assistant
  message at all is refused too.

Answer (`answer`): see `replies.completion`; the finish reason from the stop reason:
end_turn / stop_sequence / pause_turn -> stop, max_tokens / model_context_window_exceeded ->
length, tool_use -> tool_calls, refusal -> content_filter. `created` is the gateway's clock
when the answer is translated (Anthropic gives no time). Stream (`stream`): see `stream`.
Errors (`error`): see `replies.error`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from extproc.providers.translate import Translation
from extproc.providers.translate.chat_over_messages import replies, request
from extproc.providers.translate.chat_over_messages.stream import ChunkStream


class ChatOverMessages:
    """The `Translation` for this pair. `clock` gives the `created` time of answers."""

    client = "openai"
    backend = "anthropic"
    backend_path = "/v1/messages"

    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock

    def request(
        self, body: Mapping[str, Any], *, model: str, default_max_tokens: int
    ) -> dict[str, Any]:
        return request.translate(body, model=model, default_max_tokens=default_max_tokens)

    def answer(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return replies.completion(body, created=int(self._clock()))

    def stream(self, *, include_usage: bool) -> ChunkStream:
        return ChunkStream(include_usage=include_usage, created=int(self._clock()))

    def error(self, status: int, body: bytes) -> tuple[int, bytes]:
        return replies.error(status, body)


TRANSLATION: Translation = ChatOverMessages(clock=time.time)
