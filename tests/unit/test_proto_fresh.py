"""The committed code of proto/tokengate/control/v1/control.proto is what `make proto`
generates now: editing the .proto without regenerating fails here."""

from __future__ import annotations

from pathlib import Path

from extproc.control import protogen


def test_generated_control_api_code_is_up_to_date(tmp_path: Path) -> None:
    for fresh in protogen.generate(tmp_path):
        committed = protogen.OUT_DIR / fresh.name
        assert committed.read_bytes() == fresh.read_bytes(), (
            f"{committed} is stale: run `make proto`"
        )
