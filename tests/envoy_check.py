"""`envoy --mode validate` on a bootstrap: the real binary's verdict on a config."""

from __future__ import annotations

import subprocess
from pathlib import Path

from extproc.dev.stack import envoy_binary


def envoy_validate(config: str, directory: Path) -> None:
    """Raises AssertionError with Envoy's output when the real Envoy refuses `config`."""
    path = directory / "envoy.yaml"
    path.write_text(config)
    done = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout + done.stderr
