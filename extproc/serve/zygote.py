"""What the worker fork server (multiprocessing's "forkserver") loads before it forks any
worker: every module a worker imports and the tiktoken vocabularies.

Why: a worker started from scratch spends ~0.8 s of CPU before it serves (0.25 s imports,
0.5 s vocab tables); on a saturated node (two busy loops on two cores) a respawn then took
3 s, past the 2 s target. Forked from this warm process it only builds its runtime and
binds its port. The vocab pages are shared copy-on-write between the workers, and
`gc.freeze()` keeps the collector from writing to (and so copying) the preloaded objects.

Nothing here starts a thread, opens a socket or creates a gRPC object: those are made in each
worker after the fork (gRPC is only fork-safe before its core is initialised).
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

from extproc.providers import tokens
from extproc.serve import server, wiring
from extproc.serve.workers import VOCAB_DIR_ENV  # set by the parent before this runs

PRELOADED = (server.serve, wiring.build_runtime)


def _warm_up() -> None:
    vocab_dir = os.environ.get(VOCAB_DIR_ENV)
    if not vocab_dir:
        return
    try:
        tokens.use_vocab_dir(Path(vocab_dir))
        counter = tokens.TokenCounter(threads=1)
        counter.warm_up()
        counter.close()
    except Exception:  # noqa: BLE001  the worker loads them again and reports why it cannot
        return


_warm_up()
gc.freeze()
