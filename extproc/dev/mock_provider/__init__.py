"""OpenAI- and Anthropic-compatible mock LLM provider (see `provider.MockProvider`).

Modules: `http` (HTTP/1.1 server) and `parser` (request framing); `router` (endpoints, auth,
scripting via `script`); `openai` (chat) / `responses` / `completions` / `anthropic` (wire
formats of the generation endpoints), `objects` (models, files, token counting, and
`embeddings`); `text` (deterministic answers with known token counts); `recorder` (what was
received, counters); `ratelimit` (per-key limits with the providers' headers).
"""

from extproc.dev.mock_provider.provider import MockProvider, run
from extproc.dev.mock_provider.ratelimit import KeyLimits

__all__ = ["KeyLimits", "MockProvider", "run"]
