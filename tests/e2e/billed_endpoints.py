"""A gateway of its own for the e2e tests of the Responses, legacy Completions and Embeddings
endpoints: one namespace per scenario with the token budget the scenario needs, so that the
settled totals and the next 429's "used N" are exact (no other test spends there)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import openai

from extproc.dev.stack import LocalStack
from tests.e2e.forwarding import api_key_documents, gateway_keys, start_gateway
from tests.e2e.harness import metric_value

LONG = "366d"  # windows this long never roll over during a run


def policies(budgets: Mapping[str, int], extra: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """QuotaPolicy documents (a `budget` token limit each; `extra` spec lines by namespace)
    and their gateway keys."""
    keys = gateway_keys(budgets)
    docs = [
        "apiVersion: tokengate.dev/v1\nkind: QuotaPolicy\n"
        f"metadata: {{name: {ns}, namespace: {ns}}}\nspec:\n{extra.get(ns, '')}"
        f"  limits: [{{name: budget, tokens: {amount}, per: {LONG}}}]\n"
        for ns, amount in budgets.items()
    ]
    return "---\n".join([*docs, api_key_documents(keys)]), keys


def gateway(root: Path, vocab_dir: Path, documents: str) -> Iterator[LocalStack]:
    stack = start_gateway(root, vocab_dir, documents)
    try:
        yield stack
    finally:
        stack.stop()


def client(stack: LocalStack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0, timeout=60)


def settled(stack: LocalStack, namespace: str, model: str) -> tuple[int, int]:
    """(prompt, completion) tokens the sidecar settled for `namespace` and `model`."""
    got = [
        metric_value(stack, "tokengate_tokens_total", kind=kind, model=model, namespace=namespace)
        for kind in ("prompt", "completion")
    ]
    return int(got[0]), int(got[1])
