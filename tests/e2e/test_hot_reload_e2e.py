"""Hot reload through the real stack: the sidecar polls a policy directory and a key file laid
out as the kubelet mounts a ConfigMap and a Secret; updates change what the next request sees,
without a restart, and a bad update changes nothing but is reported."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from extproc.ctl.main import main as ctl_main
from extproc.dev.stack import LocalStack
from extproc.policy import load_directory
from tests.e2e.harness import client, metric_value, wait_until
from tests.kubelet import KubeletVolume

KEY = "tg-hot"
CHAT = [{"role": "user", "content": "hello"}]
RELOADS = "tokengate_policy_reloads_total"


def _files(key_limit: str, requests: int) -> dict[str, str]:
    policy = """
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {name: hot, namespace: hot}
spec:
  limits:
    - {name: rpm, requests: 100000, per: 1m}
"""
    key = f"""
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: client, namespace: hot}}
spec:
  sha256: {hashlib.sha256(KEY.encode()).hexdigest()}
  limits: [{{name: {key_limit}, requests: {requests}, per: 366d}}]
"""
    return {"hot.yaml": policy, "keys.yaml": key}


ROOMY = _files("roomy", 100_000)
ONE = _files("one-request", 1)
BROKEN = {**ONE, "keys.yaml": ONE["keys.yaml"].replace("requests: 1,", "requests: 0,")}


def _version(files: dict[str, str], directory: Path) -> str:
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    return load_directory(directory).version


class Mounted:
    """The stack, and the two volumes its sidecar watches."""

    def __init__(self, root: Path, vocab_dir: Path) -> None:
        self.policies = KubeletVolume(root / "policies")
        self.policies.write(ROOMY)
        self.secret = KubeletVolume(root / "openai-secret")
        self.stack = LocalStack(
            policy_dir=self.policies.root,
            run_dir=root / "run",
            vocab_dir=vocab_dir,
            extra_serve_args=(
                "--reload-interval",
                "0.2",
                "--openai-api-key-file",
                str(self.secret.root / "api-key"),
            ),
        )
        self.secret.write({"api-key": self.stack.mock_key})  # the key the mock accepts

    def ask(self, tag: str) -> openai.types.chat.ChatCompletion:
        api = client(self.stack, KEY, tag)
        return api.chat.completions.create(model="gpt-4o", messages=CHAT)  # type: ignore[arg-type]

    def version_in_force(self, version: str) -> bool:
        return metric_value(self.stack, "tokengate_policy_info", version=version) == 1.0

    def sidecar_log(self) -> str:
        return self.stack.children["sidecar"].log_path.read_text()


@pytest.fixture
def mounted(tmp_path: Path, vocab_dir: Path) -> Iterator[Mounted]:
    setup = Mounted(tmp_path, vocab_dir)
    setup.stack.start()
    yield setup
    setup.stack.stop()


def _policy_show(stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """What `tokengate ctl policy show --output json` says about the running sidecar."""
    capsys.readouterr()
    code = ctl_main(
        [
            "--server",
            f"127.0.0.1:{stack.ports['control']}",
            "--token-file",
            str(stack.control_token_file),
            "--output",
            "json",
            "policy",
            "show",
        ]
    )
    assert code == 0
    shown: dict[str, Any] = json.loads(capsys.readouterr().out)
    return shown


def test_policy_updates_apply_to_the_next_request_and_bad_ones_are_reported(
    mounted: Mounted, tmp_path: Path, tag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert mounted.ask(tag).choices[0].message.content

    one = _version(ONE, tmp_path / "one")
    mounted.policies.write(ONE)
    wait_until(lambda: mounted.version_in_force(one), detail=mounted.sidecar_log)
    mounted.ask(tag)  # the one request the new limit allows (a new limit starts at zero)
    with pytest.raises(openai.RateLimitError) as refused:
        mounted.ask(tag)
    assert "'one-request'" in refused.value.message

    errors = metric_value(mounted.stack, RELOADS, result="error")
    mounted.policies.write(BROKEN)
    wait_until(lambda: metric_value(mounted.stack, RELOADS, result="error") > errors)
    assert metric_value(mounted.stack, "tokengate_policy_last_reload_success") == 0.0
    assert mounted.version_in_force(one)
    with pytest.raises(openai.RateLimitError) as still:
        mounted.ask(tag)
    assert "'one-request'" in still.value.message  # the last good policy still enforced
    assert "keys.yaml (document 1): spec.limits[0].requests" in mounted.sidecar_log()
    shown = _policy_show(mounted.stack, capsys)
    assert "spec.limits[0].requests" in shown["last_reload_error"]
    assert shown["version"] == one  # still the last good snapshot

    roomy = _version(ROOMY, tmp_path / "roomy")
    mounted.policies.write(ROOMY)
    wait_until(lambda: mounted.version_in_force(roomy), detail=mounted.sidecar_log)
    assert metric_value(mounted.stack, "tokengate_policy_last_reload_success") == 1.0
    assert mounted.ask(tag).choices[0].message.content


def test_a_rotated_provider_key_is_used_without_restart(mounted: Mounted, tag: str) -> None:
    assert mounted.ask(tag).choices[0].message.content
    wrong = "sk-revoked-0000000000"
    mounted.secret.write({"api-key": wrong})

    def upstream_refuses() -> bool:
        try:
            mounted.ask(tag)
        except openai.AuthenticationError:
            return True
        return False

    wait_until(upstream_refuses)  # the mock provider sees the rotated (wrong) key
    mounted.secret.write({"api-key": mounted.stack.mock_key})
    wait_until(lambda: not upstream_refuses())
    log = mounted.sidecar_log()
    assert "credential for openai rotated" in log
    assert wrong not in log and mounted.stack.mock_key not in log
