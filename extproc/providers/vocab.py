"""Provision tiktoken vocab files for offline use (`tokengate fetch-vocab`).

The litellm wheel on PyPI carries the official cl100k_base, o200k_base and p50k_base files
under their tiktoken cache names, so the only network a set-up needs is the package index
(which every build already has). Each file is verified against tiktoken's own sha256 before
it is written, so a tampered or truncated wheel cannot feed the counter a wrong vocab.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from extproc.errors import ConfigError
from extproc.providers.tokens import VOCAB_FILES

LITELLM_WHEEL = "litellm==1.109.1"
_MEMBER_DIR = "litellm/litellm_core_utils/tokenizers/"
# sha256 of each vocab, as pinned by tiktoken_ext.openai_public.
SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "p50k_base": "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
}


def missing(dest: Path) -> list[str]:
    return [name for name, f in VOCAB_FILES.items() if not _valid(dest / f, SHA256[name])]


def _valid(path: Path, sha: str) -> bool:
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha


def fetch(dest: Path) -> list[str]:
    """Make sure every vocab is in `dest`; returns the names that had to be written."""
    todo = missing(dest)
    if not todo:
        return []
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, LITELLM_WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ConfigError(f"could not download {LITELLM_WHEEL}: {done.stderr.strip()[-500:]}")
        wheel = next(Path(tmp).glob("litellm-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for name in todo:
                data = zf.read(_MEMBER_DIR + VOCAB_FILES[name])
                if hashlib.sha256(data).hexdigest() != SHA256[name]:
                    raise ConfigError(f"{name} in {wheel.name} does not match tiktoken's sha256")
                part = dest / (VOCAB_FILES[name] + ".part")
                part.write_bytes(data)
                part.replace(dest / VOCAB_FILES[name])
    return todo
