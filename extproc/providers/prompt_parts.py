"""A request's prompt gathered part by part: the text the tokenizer counts, and the fixed
estimates (framing, images, audio, documents) that have no text to count.

Why one collector for every parser: the same rules must hold everywhere, above all that a
part nobody recognises is still paid for. `unknown` counts a value by its compact JSON, which
is at least what the provider could bill for it if it shows the value to the model as text
(and far more if it is media): conservative, never a refusal, settled on the provider's usage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from extproc.providers.openai_tools import compact


@dataclass(slots=True)
class PromptParts:
    texts: list[str] = field(default_factory=list)
    fixed: int = 0

    def text(self, value: object) -> None:
        """Count `value` if it is a non-empty string; anything else adds nothing."""
        if isinstance(value, str) and value:
            self.texts.append(value)

    def unknown(self, value: object) -> None:
        """Count a part or field we do not know by its JSON (see module docstring)."""
        if value is not None:
            self.texts.append(compact(value))

    def add(self, tokens: int) -> None:
        self.fixed += tokens
