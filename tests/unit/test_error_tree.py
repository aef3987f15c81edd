"""The error tree drawn in extproc/errors.py is the tree that exists, and nothing in extproc/
raises a bare builtin where a member of the tree belongs.

The drawing is checked against the classes themselves, found by importing every module of
extproc/: each subclass of TokengateError is drawn, under its real parent, with the module it
lives in when that is not errors.py; and nothing is drawn that does not exist.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import extproc
from extproc import errors
from extproc.errors import TokengateError

ROOT = Path(__file__).resolve().parents[2]
BANNED = ("ValueError", "RuntimeError", "Exception")
# Not scanned: the mock provider simulates a provider (its errors are the wire answers of a
# fake upstream, not tokengate's), and generated protobuf code is not ours to edit.
NOT_SCANNED = ("extproc/dev/mock_provider/",)
# Raises of a banned class that stay, each with its reason; (file, class) -> how many. An
# entry that no longer matches fails too, so the list only ever shrinks.
ALLOWED: dict[tuple[str, str], int] = {}  # nothing may raise them; add entries with a reason

_DRAWN = re.compile(r"^(?P<indent>[ │]*)(?:├── |└── )(?P<name>\w+)(?: \((?P<module>[\w.]+)\))?")


@dataclass(frozen=True, slots=True, kw_only=True)
class Drawn:
    name: str
    parent: str
    module: str | None


def drawing() -> list[Drawn]:
    """The classes of the drawing in errors.py's docstring: name, parent, module if named.
    Depth is the column of `├──`/`└──`; lines without one continue a description."""
    lines = (errors.__doc__ or "").splitlines()
    start = lines.index("    TokengateError")
    parents = ["TokengateError"]
    found: list[Drawn] = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        match = _DRAWN.match(line[4:])
        if match is None:
            continue
        depth = len(match["indent"]) // 4
        del parents[depth + 1 :]
        found.append(Drawn(name=match["name"], parent=parents[depth], module=match["module"]))
        parents.append(match["name"])
    return found


def every_module() -> list[str]:
    """Imported, so that every error class is defined. `__main__` modules are entry points
    that run on import (`python -m extproc`); they define no classes."""
    names = [
        info.name
        for info in pkgutil.walk_packages(extproc.__path__, prefix="extproc.")
        if info.name.rpartition(".")[2] != "__main__"
    ]
    for name in names:
        importlib.import_module(name)
    return names


def tree_classes() -> list[type[TokengateError]]:
    found: list[type[TokengateError]] = []
    pending: list[type[TokengateError]] = [TokengateError]
    while pending:
        for sub in pending.pop().__subclasses__():
            if sub.__module__.startswith("extproc.") and sub not in found:  # not a test double
                found.append(sub)
                pending.append(sub)
    return found


def test_the_drawing_is_parsed() -> None:
    drawn = {item.name: item for item in drawing()}
    assert drawn["BadRequest"].parent == "ClientError"
    assert drawn["ClientError"].parent == "TokengateError"
    assert drawn["SSEError"].module == "extproc.providers.sse"
    assert drawn["QuotaStoreError"].module is None


def test_every_error_class_is_drawn_under_its_parent_in_its_module() -> None:
    modules = every_module()
    assert len(modules) > 50 and "extproc.gate.processor" in modules
    classes = tree_classes()
    names = [cls.__name__ for cls in classes]
    assert len(names) == len(set(names)), "two error classes share a name: the drawing is ambiguous"
    drawn = {item.name: item for item in drawing()}
    assert sorted(drawn) == sorted(names), "drawn in extproc/errors.py vs. defined"
    for cls in classes:
        item = drawn[cls.__name__]
        [parent] = [base for base in cls.__bases__ if issubclass(base, TokengateError)]
        assert item.parent == parent.__name__, f"{cls.__name__} is drawn under {item.parent}"
        home = None if cls.__module__ == errors.__name__ else cls.__module__
        assert item.module == home, f"{cls.__name__} lives in {cls.__module__}"


def banned_raises(root: Path) -> Counter[tuple[str, str]]:
    """(file, class) -> how many `raise ValueError(…)` / `raise ValueError` and the like."""
    found: Counter[tuple[str, str]] = Counter()
    for path in sorted((root / "extproc").rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if "_pb2" in path.name or relative.startswith(NOT_SCANNED):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=relative)):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(raised, ast.Name) and raised.id in BANNED:
                found[(relative, raised.id)] += 1
    return found


def test_the_scan_sees_a_banned_raise(tmp_path: Path) -> None:
    code = tmp_path / "extproc" / "x.py"
    code.parent.mkdir()
    code.write_text(
        "def f(n):\n"
        "    if n:\n"
        "        raise ValueError('bad')\n"
        "    try:\n"
        "        pass\n"
        "    except KeyError:\n"
        "        raise RuntimeError\n"
        "    raise\n"
    )
    (tmp_path / "extproc" / "dev" / "mock_provider").mkdir(parents=True)
    (tmp_path / "extproc" / "dev" / "mock_provider" / "m.py").write_text("raise Exception()\n")
    assert banned_raises(tmp_path) == {
        ("extproc/x.py", "ValueError"): 1,
        ("extproc/x.py", "RuntimeError"): 1,
    }


def test_no_bare_builtin_is_raised_where_a_tree_member_belongs() -> None:
    assert dict(banned_raises(ROOT)) == ALLOWED
