"""Write the policy directory the way the kubelet writes a ConfigMap volume.

The sidecar's Reloader (extproc/serve/reload.py) already understands that layout: each version in
a new hidden `..<timestamp>` directory, a `..data_tmp` symlink to it renamed over `..data`
(the one atomic step), every file a visible symlink `<name> -> ..data/<name>`. A reader
that resolves a visible name sees one version or the other, never half a write, and the
`..data` target tells the Reloader cheaply that something changed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from extproc.errors import InvariantError

DATA = "..data"
DATA_TMP = "..data_tmp"
_VERSION_DIR = re.compile(r"\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\..+")


class AtomicDirectory:
    """The directory `root`, owned by policy-sync. `write` is idempotent: content equal to
    what is already there changes nothing on disk, so the Reloader does no needless work."""

    def __init__(self, *, root: Path) -> None:
        self.root = root
        self._current: dict[str, bytes] | None = None  # None: not known yet, read from disk

    def write(self, files: Mapping[str, bytes]) -> bool:
        """Make the visible files exactly `files`; True when anything changed on disk."""
        wanted = dict(files)
        for name in wanted:
            _check_name(name)
        if wanted == self._known():
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        version = self._new_version(wanted)
        self._swap(version)
        self._link(wanted)
        self._prune(wanted, keep=version)
        self._current = wanted
        return True

    def _known(self) -> dict[str, bytes] | None:
        """What is visible now. Read from disk once, so a restarted syncer that lists the
        same ConfigMaps does not swap (the emptyDir outlives a container restart)."""
        if self._current is None:
            self._current = _read_visible(self.root)
        return self._current

    def _new_version(self, files: Mapping[str, bytes]) -> Path:
        """A fresh hidden directory holding every file; readable by the sidecar's user."""
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
        version = Path(tempfile.mkdtemp(prefix=stamp, dir=self.root))
        try:
            for name, content in files.items():
                path = version / name
                path.write_bytes(content)
                path.chmod(0o644)
            version.chmod(0o755)
        except OSError:
            shutil.rmtree(version, ignore_errors=True)
            raise
        return version

    def _swap(self, version: Path) -> None:
        tmp = self.root / DATA_TMP
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # left by a crash between symlink and rename
        tmp.symlink_to(version.name)
        os.rename(tmp, self.root / DATA)

    def _link(self, files: Mapping[str, bytes]) -> None:
        """After the swap, like the kubelet: until then a new name would dangle."""
        for name in files:
            target = f"{DATA}/{name}"
            link = self.root / name
            if _readlink(link) == target:
                continue
            tmp = self.root / "..link_tmp"
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(target)
            os.replace(tmp, link)

    def _prune(self, files: Mapping[str, bytes], *, keep: Path) -> None:
        """Visible links to names that left, then every older version directory. Only our
        own kind of entry is removed: a link into `..data`, a timestamped directory."""
        for entry in os.scandir(self.root):
            name = entry.name
            if not name.startswith(".") and name not in files:
                if (_readlink(Path(entry.path)) or "").startswith(f"{DATA}/"):
                    os.unlink(entry.path)
            elif name != keep.name and _VERSION_DIR.fullmatch(name) and not entry.is_symlink():
                shutil.rmtree(entry.path, ignore_errors=True)


def _check_name(name: str) -> None:
    """`_content` only produces names that pass; this guard keeps a bug from writing outside
    `root` or over the `..data` machinery."""
    if not name or name.startswith(".") or "/" in name or "\0" in name:
        raise InvariantError(f"not a visible file name: {name!r}")


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:  # missing, or not a symlink
        return None


def _read_visible(root: Path) -> dict[str, bytes] | None:
    """The files our links expose, or None when the directory is not ours in that shape
    (then the first write simply rewrites it)."""
    if not os.path.lexists(root / DATA):
        return None
    found: dict[str, bytes] = {}
    try:
        for entry in os.scandir(root):
            if entry.name.startswith("."):
                continue
            if _readlink(Path(entry.path)) != f"{DATA}/{entry.name}":
                return None
            found[entry.name] = Path(entry.path).read_bytes()
    except OSError:
        return None
    return found
