"""Smoke-test the tokengate image (`make image-test`): the image's Envoy, sidecar and mock
provider in three containers sharing one network namespace, as the chart's pod does, and one
governed request through them with the official OpenAI SDK.

Inside the shared namespace the ports are the chart's fixed ones (nothing else lives there);
on the host the engine publishes the Envoy listener and the sidecar's /metrics on free
loopback ports of its choosing. Every container runs as the image's user with a read-only
root, a tmpfs /tmp and no capabilities (the chart's securityContext). Checked:

- a plain and a streamed chat completion come back through Envoy from the mock provider;
- the sidecar's Prometheus counters moved: two requests counted `ok` for the demo namespace,
  tokens settled;
- the image's HEALTHCHECK passes against the running sidecar (gRPC health);
- the sidecar runs as uid 10001 and the image has no C compiler.

The Envoy bootstrap is rendered by the image's code from envoy/local.yaml (as the chart
renders its own into a ConfigMap) and mounted read-only; the policies are examples/policies
(the demo gateway key `tg-demo`), mounted where the image looks for them.

    python image/smoke_test.py --image localhost/tokengate:0.1.0 --engine podman \
        --run-args '--runtime runc --ulimit nofile=4096:4096 --ulimit nproc=4096:4096'

Exit 0 when every check passes; otherwise 1, with the containers' logs.
"""

from __future__ import annotations

import argparse
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from openai import OpenAI, OpenAIError
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
POLICIES = REPO / "examples" / "policies"
DEMO_KEY = "tg-demo"  # examples/policies/demo.yaml
NAMESPACE = "demo"
MODEL = "gpt-4o-mini"
# Inside the shared network namespace: the chart's ports (values.yaml) and the mock's.
LISTEN, ADMIN, EXT_PROC, METRICS, MOCK = 10000, 9901, 50051, 9464, 8000
READY_TIMEOUT_S = 90.0


class SmokeError(Exception):
    """A check failed; the message says which."""


@dataclass
class Containers:
    """The containers this run started (removed at the end, by name)."""

    engine: str
    run_args: list[str]
    image: str
    prefix: str = field(default_factory=lambda: f"tokengate-smoke-{secrets.token_hex(4)}")
    names: list[str] = field(default_factory=list)

    def cli(self, *args: str, check: bool = True, timeout: float = 120.0) -> str:
        done = subprocess.run(
            [self.engine, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise SmokeError(f"{self.engine} {shlex.join(args)}: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def run(self, role: str, command: Sequence[str], *, options: Sequence[str] = ()) -> str:
        name = f"{self.prefix}-{role}"
        self.names.append(name)
        self.cli(
            "run", "--detach", "--name", name, *self.run_args,
            # The chart's securityContext: the image's non-root user, read-only root.
            "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",  # noqa: S108 - in the container
            "--security-opt", "no-new-privileges",
            *options, self.image, *command,
        )  # fmt: skip
        return name

    def logs(self, name: str) -> str:
        done = subprocess.run(
            [self.engine, "logs", name], capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout + done.stderr

    def running(self, name: str) -> bool:
        state = self.cli("inspect", "--format", "{{.State.Running}}", name, check=False)
        return state.strip() == "true"

    def wait_for(self, name: str, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if ready():
                return
            if not self.running(name):
                raise SmokeError(f"{name} exited before {what}")
            time.sleep(0.5)
        raise SmokeError(f"{name}: no {what} after {READY_TIMEOUT_S:.0f}s")

    def published(self, name: str, port: int) -> int:
        """The host port the engine chose for `port` (published on 127.0.0.1)."""
        line = self.cli("port", name, f"{port}/tcp").strip().splitlines()[0]
        return int(line.rsplit(":", 1)[1])

    def report(self) -> None:
        for name in self.names:
            tail = "\n".join(self.logs(name).splitlines()[-30:])
            sys.stderr.write(f"--- {name} (last lines)\n{tail}\n")

    def remove(self) -> None:
        """Last started first: the others live in the first one's network namespace."""
        for name in reversed(self.names):
            self.cli("rm", "--force", name, check=False)


# The bootstrap, rendered by the image's own code from the repo's template (the image has
# no envoy/ directory; `tokengate dev` cannot run from it, see image/NOTES.md).
TEMPLATE = "/etc/tokengate/envoy-local.yaml"
RENDER = f"""
import sys
from pathlib import Path
from extproc.kube.envoy_config import LocalEnvoy, Upstream, render_local
mock = Upstream.local({MOCK})
values = LocalEnvoy(listen_host="0.0.0.0", listen_port={LISTEN}, admin_port={ADMIN},
                    ext_proc_port={EXT_PROC}, openai=mock, anthropic=mock)
sys.stdout.write(render_local(values, Path("{TEMPLATE}")))
"""


def envoy_bootstrap(stack: Containers) -> str:
    """Envoy's listener on the namespace's own interface (0.0.0.0), for the port forward."""
    template = REPO / "envoy" / "local.yaml"
    return stack.cli(
        "run", "--rm", *stack.run_args, "--volume", f"{template}:{TEMPLATE}:ro",
        "--entrypoint", "python", stack.image, "-c", RENDER,
    )  # fmt: skip


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our loopback port
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:  # fmt: skip
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and labels.items() <= dict(sample_labels).items()
    )


def start(stack: Containers, workdir: Path) -> tuple[str, str]:
    """Envoy (owning the namespace and the published ports), the sidecar, the mock."""
    config = workdir / "envoy.yaml"
    config.write_text(envoy_bootstrap(stack))
    config.chmod(0o644)  # read by the image's user
    envoy = stack.run(
        "envoy",
        ["--config-path", "/etc/envoy/envoy.yaml", "--log-level", "warn"],
        options=[
            "--entrypoint", "envoy",
            "--publish", f"127.0.0.1::{LISTEN}", "--publish", f"127.0.0.1::{METRICS}",
            "--volume", f"{config}:/etc/envoy/envoy.yaml:ro",
        ],
    )  # fmt: skip
    shared = ["--network", f"container:{envoy}"]
    mock_key = "mock-" + secrets.token_hex(8)
    mock = stack.run(
        "mock",
        ["mock-provider", "--host", "127.0.0.1", "--port", str(MOCK), "--require-key", mock_key],
        options=shared,
    )
    sidecar = stack.run(
        "sidecar",
        [
            "serve", f"--listen=127.0.0.1:{EXT_PROC}", f"--metrics-listen=0.0.0.0:{METRICS}",
            "--control-listen=off", "--log-level=INFO",
        ],
        options=[
            *shared,
            "--volume", f"{POLICIES}:/etc/tokengate/policies:ro",
            "--env", f"OPENAI_API_KEY={mock_key}", "--env", f"ANTHROPIC_API_KEY={mock_key}",
        ],
    )  # fmt: skip
    stack.wait_for(mock, "ready line", lambda: "mock-provider listening on" in stack.logs(mock))
    stack.wait_for(sidecar, "ready line", lambda: "tokengate ready " in stack.logs(sidecar))
    # Envoy's admin stays on the namespace's loopback (as in the chart): asked from inside.
    admin = f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{ADMIN}/ready').read())"
    probe = ["exec", envoy, "python", "-c", admin]
    stack.wait_for(envoy, "LIVE admin", lambda: "LIVE" in stack.cli(*probe, check=False))
    return envoy, sidecar


def check(stack: Containers, envoy: str, sidecar: str) -> None:
    base_url = f"http://127.0.0.1:{stack.published(envoy, LISTEN)}"
    metrics_url = f"http://127.0.0.1:{stack.published(envoy, METRICS)}/metrics"
    before = scrape(metrics_url)
    ok = {"namespace": NAMESPACE, "outcome": "ok"}
    client = OpenAI(base_url=f"{base_url}/v1", api_key=DEMO_KEY, max_retries=0, timeout=30)
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Say hello from the image."}
    ]
    answer = client.chat.completions.create(model=MODEL, messages=messages)
    text = answer.choices[0].message.content or ""
    if not text or answer.usage is None or answer.usage.completion_tokens < 1:
        raise SmokeError(f"plain answer without text or usage: {answer!r}")
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(model=MODEL, messages=messages, stream=True)
        if chunk.choices
    )
    if not streamed:
        raise SmokeError("streamed answer without text")
    # A request is counted when it settles, just after its last byte: wait a moment for it.
    deadline = time.monotonic() + 10
    while True:
        after = scrape(metrics_url)
        counted = total(after, "tokengate_requests_total", **ok) - total(
            before, "tokengate_requests_total", **ok
        )
        if counted >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    tokens = total(after, "tokengate_tokens_total", namespace=NAMESPACE) - total(
        before, "tokengate_tokens_total", namespace=NAMESPACE
    )
    if counted != 2 or tokens <= 0:
        raise SmokeError(f"metrics: {counted} requests counted ok (want 2), {tokens} tokens")
    user = stack.cli("exec", sidecar, "id", "-u").strip()
    compilers = stack.cli("exec", sidecar, "sh", "-c", "command -v cc gcc c++ clang || true")
    if user != "10001" or compilers.strip():
        raise SmokeError(f"image runs as uid {user} (want 10001); compilers: {compilers!r}")
    health = subprocess.run(
        [stack.engine, "healthcheck", "run", sidecar]
        if stack.engine == "podman"
        else [stack.engine, "exec", sidecar, "tokengate-healthcheck"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if health.returncode != 0:
        raise SmokeError(f"HEALTHCHECK failed ({health.returncode}): {health.stdout.strip()}")
    sys.stdout.write(
        f"image-test: plain answer {text[:40]!r}, streamed answer {streamed[:40]!r}; "
        f"metrics +{counted:.0f} requests ok, +{tokens:.0f} tokens; uid {user}; "
        "healthcheck passed\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--engine", default="podman")
    parser.add_argument("--run-args", default="", help="extra `run` flags, one string")
    args = parser.parse_args(argv)
    stack = Containers(engine=args.engine, run_args=shlex.split(args.run_args), image=args.image)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tokengate-smoke-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        try:
            envoy, sidecar = start(stack, workdir)
            check(stack, envoy, sidecar)
        except (SmokeError, OpenAIError, OSError, subprocess.SubprocessError) as exc:
            sys.stderr.write(f"image-test FAILED: {exc}\n")
            stack.report()
            return 1
        finally:
            stack.remove()
    sys.stdout.write(f"image-test: passed in {time.monotonic() - began:.1f}s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
