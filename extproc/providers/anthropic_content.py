"""The prompt of an Anthropic Messages request, block by block, with the error bound of each.

- text, thinking, tool_use (name + compact input JSON): tokenized with the estimate encoding
  (Anthropic does not publish its tokenizer; the provider's usage settles);
- image: `images.anthropic_image_tokens`, exact when base64 data gives the size, the model's
  documented maximum otherwise (URL or file source);
- document: a text source as its text, a content source block by block, a base64 PDF by its
  pages (`documents`: pages x (1,500 text + the largest page image)), a URL or file source as
  `documents.UNSEEN_PAGES` pages; title and context as text;
- tool_result and search_result: their nested content, block by block;
- tools: their compact JSON plus the tool-use system prompt Anthropic adds (documented per
  model and tool_choice, "Tool use pricing"), and the documented extra of Anthropic-defined
  tools (bash, text editor, computer use);
- any other block (redacted thinking, server tool results, blocks not invented yet): its
  compact JSON (`PromptParts.unknown`), never refused.
"""

from __future__ import annotations

from typing import Any

from extproc.providers import documents, images
from extproc.providers.openai_tools import compact
from extproc.providers.prompt_parts import PromptParts

# "Tool use system prompt token count" by model prefix: (auto or none, any or tool). Models
# not listed (Claude 3.5 Sonnet and everything since) cost 346 / 313.
TOOL_PROMPT_TOKENS: tuple[tuple[str, tuple[int, int]], ...] = (
    ("claude-3-opus", (530, 281)),
    ("claude-3-sonnet", (159, 235)),
    ("claude-3-haiku", (264, 340)),
    ("claude-3-5-haiku", (264, 340)),
)
DEFAULT_TOOL_PROMPT_TOKENS = (346, 313)
# Anthropic-defined tools add documented input tokens beyond their definition: bash 245, text
# editor 700, computer use 735 plus its 499-token system prompt (the larger of 466 / 499).
DEFINED_TOOL_TOKENS = (("bash_", 245), ("text_editor_", 700), ("computer_", 735 + 499))
_TEXT_FIELDS = {"text": "text", "thinking": "thinking"}
# Tool results nest: past this depth the rest is counted as JSON (no Python recursion).
MAX_NESTING = 32


def content(parts: PromptParts, value: object, model: str, depth: int = 0) -> None:
    """A `system` or message `content`: a string or a list of blocks. Other shapes are
    refused by the provider for free, so they count nothing."""
    if isinstance(value, str):
        parts.text(value)
    elif isinstance(value, list) and depth > MAX_NESTING:
        parts.unknown(value)
    elif isinstance(value, list):
        for block in value:
            _block(parts, block, model, depth + 1)


def _block(parts: PromptParts, block: object, model: str, depth: int) -> None:
    if not isinstance(block, dict):
        return
    kind = block.get("type")
    field = _TEXT_FIELDS.get(kind) if isinstance(kind, str) else None
    if field is not None and isinstance(block.get(field), str):
        parts.text(block[field])
    elif kind == "image":
        parts.add(_image(block.get("source"), model))
    elif kind == "document":
        _document(parts, block, model, depth)
    elif kind in ("tool_use", "server_tool_use"):
        parts.text(block.get("name"))
        parts.text(compact(block.get("input", {})))
    elif kind == "tool_result":
        content(parts, block.get("content"), model, depth)
    elif kind == "search_result":
        parts.text(block.get("source"))
        parts.text(block.get("title"))
        content(parts, block.get("content"), model, depth)
    else:
        parts.unknown(block)


def _image(source: object, model: str) -> int:
    data = source.get("data") if isinstance(source, dict) else None
    if isinstance(source, dict) and source.get("type") == "base64" and isinstance(data, str):
        return images.anthropic_image_tokens(model, size=images.image_size(data))
    return images.anthropic_image_tokens(model, size=None)


def _document(parts: PromptParts, block: dict[str, Any], model: str, depth: int) -> None:
    parts.text(block.get("title"))
    parts.text(block.get("context"))
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if not isinstance(source, dict):
        pages = documents.UNSEEN_PAGES
    elif kind == "text":
        parts.text(source.get("data"))
        return
    elif kind == "content":
        content(parts, source.get("content"), model, depth)
        return
    elif kind == "base64" and isinstance(source.get("data"), str):
        pages = documents.base64_pdf_pages(source["data"])
    else:  # url, file: the document is not in the request
        pages = documents.UNSEEN_PAGES
    page_image = images.anthropic_image_tokens(model, size=None)
    parts.add(documents.pdf_tokens(pages, page_image_tokens=page_image))


def tools(parts: PromptParts, body: dict[str, Any], model: str) -> None:
    """The tool definitions, the tool-use system prompt and the forced choice."""
    defined = body.get("tools")
    if not isinstance(defined, list) or not defined:
        return
    parts.text(compact(defined))
    choice = body.get("tool_choice")
    forced = isinstance(choice, dict) and choice.get("type") in ("any", "tool")
    auto, any_tool = DEFAULT_TOOL_PROMPT_TOKENS
    for prefix, counts in TOOL_PROMPT_TOKENS:
        if model.startswith(prefix):
            auto, any_tool = counts
    parts.add(any_tool if forced else auto)
    if isinstance(choice, dict):
        parts.text(choice.get("name"))
    for tool in defined:
        kind = tool.get("type") if isinstance(tool, dict) else None
        for prefix, tokens in DEFINED_TOOL_TOKENS:
            if isinstance(kind, str) and kind.startswith(prefix):
                parts.add(tokens)
