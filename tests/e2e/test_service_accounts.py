"""Service-account identity through the real Envoy running the *Helm chart's* bootstrap: the
sidecar loads the chart's quota ConfigMap, Envoy verifies projected-token-shaped JWTs from a
test issuer (inline JWKS), and the official SDKs are the clients."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from extproc.dev.stack import LocalStack
from tests.e2e.harness import anthropic_client, client, metric_value, mock_records, wait_until
from tests.helm.chart import envoy_bootstrap, mounted_policies
from tests.jwt_issuer import AUDIENCE, Issuer

pytestmark = pytest.mark.e2e

ISSUER = Issuer()
GATEWAY_KEY = "tg-sa-suite-key"
MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]
QUOTAS = {
    "team-a": {"requestsPerMinute": 10000, "concurrent": 50},
    "team-tight": {"requestsPerDay": 2},
    "team-claude": {"requestsPerMinute": 10000, "models": ["claude-*"]},
    "team-other": {"requestsPerMinute": 10000},
    "team-keys": {"requestsPerMinute": 10000},
}


def _values(ports: Mapping[str, int]) -> dict[str, Any]:
    mock = {"host": "127.0.0.1", "port": ports["mock"], "tls": False}
    return {
        "sidecar": {"extProcPort": ports["ext_proc"]},
        "providers": {"openai": mock, "anthropic": mock},
        "serviceAccountTokens": {
            "enabled": True,
            "issuer": ISSUER.issuer,
            "audiences": [AUDIENCE],
            "jwks": {"inline": ISSUER.jwks},
        },
        "quotas": {"namespaces": QUOTAS},
    }


def _chart_envoy(ports: Mapping[str, int]) -> str:
    """The chart's bootstrap as rendered; only its ports become 0 (ephemeral) so parallel
    test processes do not collide."""
    bootstrap = envoy_bootstrap(_values(ports))
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = 0
    for listener in bootstrap["static_resources"]["listeners"]:
        listener["address"]["socket_address"]["port_value"] = 0
    return json.dumps(bootstrap)


@pytest.fixture(scope="module")
def sa_stack(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("sa")
    keys = root / "keys"  # a second policy directory, as policy-sync would fill it
    keys.mkdir()
    digest = hashlib.sha256(GATEWAY_KEY.encode()).hexdigest()
    (keys / "keys.yaml").write_text(
        "apiVersion: tokengate.dev/v1\nkind: ApiKey\n"
        f"metadata: {{name: ci, namespace: team-keys}}\nspec: {{sha256: {digest}}}\n"
    )
    stack = LocalStack(
        policy_dir=mounted_policies({"quotas": {"namespaces": QUOTAS}}, root / "quotas"),
        run_dir=root / "run",
        vocab_dir=vocab_dir,
        extra_serve_args=("--policy-dir", str(keys)),
        envoy_config=_chart_envoy,
    ).start()
    yield stack
    stack.stop()


def _requests(stack: LocalStack, namespace: str) -> float:
    return metric_value(
        stack, "tokengate_requests_total", namespace=namespace, model="gpt-4o", outcome="ok"
    )


def _counted(stack: LocalStack, namespace: str, expected: float) -> None:
    """Requests are counted when their stream ends, just after the client has the answer."""
    wait_until(
        lambda: _requests(stack, namespace) == expected,
        detail=lambda: _requests(stack, namespace),
    )


def test_a_verified_token_spends_its_namespace_quota(sa_stack: LocalStack, tag: str) -> None:
    before = _requests(sa_stack, "team-a")
    token = ISSUER.token("team-a", "summarizer")
    reply = client(sa_stack, token, tag).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert reply.choices[0].message.content
    _counted(sa_stack, "team-a", before + 1)
    # The token went no further than Envoy; the provider saw only the injected key.
    (record,) = mock_records(sa_stack, tag)
    assert record["credentials"] == {"authorization": [f"Bearer {sa_stack.mock_key}"]}


def test_the_namespace_comes_from_the_token_and_its_quota_applies(
    sa_stack: LocalStack, tag: str
) -> None:
    api = client(sa_stack, ISSUER.token("team-tight", "cron"), tag)
    for _ in range(2):
        api.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as refused:
        api.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert "requests-per-day" in refused.value.message
    # Another service account of another namespace is not affected.
    other = client(sa_stack, ISSUER.token("team-other", "cron"), tag)
    assert other.chat.completions.create(model="gpt-4o", messages=MESSAGES).id
    assert len(mock_records(sa_stack, tag)) == 3


def test_anthropic_sdk_with_a_service_account_token(sa_stack: LocalStack, tag: str) -> None:
    api = anthropic_client(sa_stack, ISSUER.token("team-claude", "assistant"), tag)
    message = api.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=MESSAGES)
    assert message.usage.output_tokens > 0
    (record,) = mock_records(sa_stack, tag)
    assert record["credentials"] == {"x-api-key": [sa_stack.mock_key]}


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("forged", Issuer(kid=ISSUER.kid).token("team-a", "summarizer")),
        ("expired", ISSUER.token("team-a", "summarizer", issued_ago_s=7200, lifetime_s=600)),
        ("wrong-issuer", ISSUER.token("team-a", "summarizer", issuer="https://evil.test")),
        ("not-a-jwt-at-all", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"),
    ],
)
def test_forged_or_expired_tokens_get_401(
    sa_stack: LocalStack, tag: str, name: str, token: str
) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        client(sa_stack, token, tag).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert refused.value.status_code == 401
    assert "service-account token was rejected" in refused.value.message
    assert refused.value.code == "invalid_token"
    assert mock_records(sa_stack, tag) == []


def test_wrong_audience_is_refused(sa_stack: LocalStack, tag: str) -> None:
    token = ISSUER.token("team-a", "summarizer", audience="vault")
    with pytest.raises(openai.APIStatusError) as refused:
        client(sa_stack, token, tag).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert refused.value.status_code in (401, 403)
    assert "Audiences" in refused.value.message
    assert mock_records(sa_stack, tag) == []


def test_forged_token_on_the_anthropic_route_gets_an_anthropic_401(
    sa_stack: LocalStack, tag: str
) -> None:
    forged = Issuer(kid=ISSUER.kid).token("team-claude", "assistant")
    with pytest.raises(anthropic.AuthenticationError) as refused:
        anthropic_client(sa_stack, forged, tag).messages.create(
            model="claude-haiku-4-5", max_tokens=20, messages=MESSAGES
        )
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_a_verified_token_without_service_account_claims_is_refused(
    sa_stack: LocalStack, tag: str
) -> None:
    token = ISSUER.token("team-a", "x", claims={"sub": "alice@example.com"})
    with pytest.raises(openai.AuthenticationError) as refused:
        client(sa_stack, token, tag).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert "names no Kubernetes service account" in refused.value.message
    assert mock_records(sa_stack, tag) == []


def test_a_namespace_without_quota_is_forbidden(sa_stack: LocalStack, tag: str) -> None:
    token = ISSUER.token("team-nobody", "app")
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client(sa_stack, token, tag).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert "team-nobody" in refused.value.message


def test_gateway_keys_keep_working_beside_tokens(sa_stack: LocalStack, tag: str) -> None:
    before = _requests(sa_stack, "team-keys")
    reply = client(sa_stack, GATEWAY_KEY, tag).chat.completions.create(
        model="gpt-4o", messages=MESSAGES
    )
    assert reply.id
    _counted(sa_stack, "team-keys", before + 1)
    with pytest.raises(openai.AuthenticationError) as unknown:
        client(sa_stack, "tg-unknown", tag).chat.completions.create(
            model="gpt-4o", messages=MESSAGES
        )
    assert unknown.value.code == "invalid_api_key"
