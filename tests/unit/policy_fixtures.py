"""The fixture-per-refusal harness every policy kind's tests share: one invalid file per
case, each case naming the document, field and problem the loader must report."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import pytest

from extproc.errors import PolicyError
from extproc.policy import load_directory


class InvalidCase(Protocol):
    @property
    def fixture(self) -> str: ...
    @property
    def document(self) -> int | None: ...  # None: a file-level problem (YAML syntax)
    @property
    def field(self) -> str | None: ...
    @property
    def problem(self) -> str: ...  # a substring of PolicyError.problem


def assert_one_case_per_fixture(invalid: Path, cases: Sequence[InvalidCase]) -> None:
    assert sorted(c.fixture for c in cases) == sorted(p.name for p in invalid.iterdir())


def assert_refused_as(
    invalid: Path, case: InvalidCase, tmp_path: Path, *, allow_usd: bool = False
) -> None:
    """The fixture alone in a policy directory is refused exactly where the case says."""
    shutil.copy(invalid / case.fixture, tmp_path)
    with pytest.raises(PolicyError) as info:
        load_directory(tmp_path, allow_usd=allow_usd)
    err = info.value
    assert (err.file, err.document, err.field) == (case.fixture, case.document, case.field)
    assert case.problem in err.problem
