"""Provider wire schemas, one module each (see `_base.Provider` for what a module offers)."""

from extproc.providers._base import MAX_OUTPUT_TOKENS, ParsedRequest, Provider, Usage

__all__ = ["MAX_OUTPUT_TOKENS", "ParsedRequest", "Provider", "Usage"]
