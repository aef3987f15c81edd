"""OpenAI Embeddings (`POST /v1/embeddings`): one vector per input, usage = input tokens.

`input` takes the legacy prompt's forms (string, strings, token array, token arrays); an
empty string is the real API's 400. Vectors are deterministic (seeded by the input's index
and text) and unit length, in `encoding_format` `float` (JSON numbers) or `base64` (packed
little-endian float32, what the openai SDK asks for by default); `dimensions` shortens
them. Usage is `prompt_tokens` = `total_tokens`, exact under tiktoken.
"""

from __future__ import annotations

import base64
import math
import random
import struct
from typing import Any

from extproc.dev.mock_provider.common import ApiError, positive_int, require_model
from extproc.dev.mock_provider.completions import prompts
from extproc.dev.mock_provider.parser import Request
from extproc.dev.mock_provider.text import seed_for
from extproc.providers.tokens import count, encoding_name_for

DEFAULT_DIMENSIONS = 1536
_DIMENSIONS = {"text-embedding-3-large": 3072}


def answer(_: Request, __: str, payload: object) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = require_model(payload)
    texts, tokens, inputs = prompts(payload, "input")
    if any(not text for text in texts):
        raise ApiError(400, "'$.input' is invalid. Please check the API reference.")
    native = _DIMENSIONS.get(model, DEFAULT_DIMENSIONS)
    dimensions = positive_int(payload, "dimensions") or native
    if dimensions > native:
        raise ApiError(400, f"This model does not support more than {native} dimensions.")
    fmt = payload.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise ApiError(400, "'encoding_format' must be 'float' or 'base64'")
    encoding = encoding_name_for(model)
    prompt = sum(count(text, encoding) for text in texts) + tokens
    seeds = texts or [str(index) for index in range(inputs)]
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": _vector(seed_for(f"{index}:{seed}".encode()), dimensions, fmt),
        }
        for index, seed in enumerate(seeds)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }


def cost(answer: dict[str, Any]) -> int:
    """What an answer costs the key's token rate limit: its input tokens."""
    return int(answer["usage"]["prompt_tokens"])


def _vector(seed: int, dimensions: int, fmt: str) -> list[float] | str:
    # Reproducibility, not secrecy: a seeded PRNG is exactly what is wanted here.
    rng = random.Random(seed)  # noqa: S311
    values = [rng.uniform(-1.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    unit = [v / norm for v in values]
    if fmt == "float":
        return unit
    return base64.b64encode(struct.pack(f"<{dimensions}f", *unit)).decode("ascii")
