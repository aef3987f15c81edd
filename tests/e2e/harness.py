"""Helpers for e2e tests: SDK clients, the mock provider's records, sidecar metrics."""

from __future__ import annotations

import http.client
import json
import urllib.request
from typing import Any

import anthropic
import openai

from extproc.dev.stack import LocalStack
from tests.waiting import wait_until

__all__ = ["wait_until"]


def client(stack: LocalStack, key: str, tag: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.base_url}/v1",
        api_key=key,
        max_retries=0,
        timeout=60,
        default_headers={"x-request-tag": tag, **headers},
    )


def mock_records(stack: LocalStack, tag: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{stack.ports['mock']}/_mock/requests?tag={tag}"
    with urllib.request.urlopen(url, timeout=10) as response:
        records: list[dict[str, Any]] = json.loads(response.read())
    return records


def metric_value(stack: LocalStack, name: str, **labels: str) -> float:
    """The sum of the samples of `name` on the sidecar's /metrics whose labels include
    `labels` (0 when none): the labels a test does not name are summed over, as PromQL's
    `sum(name{labels})` would (e.g. tokens over every key of a namespace)."""
    url = f"http://127.0.0.1:{stack.ports['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    want = {f'{k}="{v}"' for k, v in labels.items()}
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == name:
            got: set[str] = set()
        elif sample.startswith(name + "{"):
            got = set(sample[len(name) + 1 : -1].split(","))
        else:
            continue
        if want <= got:
            total += float(value)
    return total


def raw_post(
    stack: LocalStack,
    body: bytes,
    *,
    key: str = "tg-e2e",
    path: str = "/v1/chat/completions",
    chunked: bool = False,
    tag: str = "",
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST `body` as-is (no SDK validation in the way); returns status, JSON body, headers."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports["envoy"], timeout=60)
    headers = {
        "authorization": f"Bearer {key}",
        "content-type": "application/json",
        "x-request-tag": tag,
    }
    try:
        if chunked:
            conn.request("POST", path, body=iter([body]), headers=headers, encode_chunked=True)
        else:
            conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    return response.status, json.loads(data), {k.lower(): v for k, v in response.getheaders()}


def anthropic_client(stack: LocalStack, key: str, tag: str, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=stack.base_url,
        api_key=key,
        max_retries=0,
        timeout=60,
        default_headers={"x-request-tag": tag, **headers},
    )


def mock_stats(stack: LocalStack) -> dict[str, int]:
    url = f"http://127.0.0.1:{stack.ports['mock']}/_mock/stats"
    with urllib.request.urlopen(url, timeout=10) as response:
        stats: dict[str, int] = json.loads(response.read())
    return stats
