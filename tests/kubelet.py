"""A mounted ConfigMap or Secret as the kubelet lays it out on disk, for the hot-reload
tests (integration and end to end) that must see exactly what a pod sees."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path


class KubeletVolume:
    """A ConfigMap or Secret volume written the way the kubelet's AtomicWriter does it: each
    version in a new hidden `..<timestamp>` directory, a `..data_tmp` symlink to it renamed
    over `..data` (the one atomic step), every key a visible symlink through `..data`, then
    keys that left the payload unlinked and the previous version's directory removed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._versions = 0

    def write(self, files: Mapping[str, str]) -> None:
        self._versions += 1
        stamp = f"..2026_01_01_00_00_00.{self._versions}"
        (self.root / stamp).mkdir()
        for name, text in files.items():
            (self.root / stamp / name).write_text(text)
        data = self.root / "..data"
        previous = os.readlink(data) if os.path.lexists(data) else None
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(stamp)
        os.rename(tmp, data)
        for name in files:
            if not os.path.lexists(self.root / name):
                (self.root / name).symlink_to(Path("..data") / name)
        for name in os.listdir(self.root):
            if not name.startswith(".") and name not in files:
                (self.root / name).unlink()
        if previous is not None:
            shutil.rmtree(self.root / previous)
