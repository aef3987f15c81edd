"""Load policy documents from text and from a directory (a mounted ConfigMap) into a
`PolicySnapshot`.

A ConfigMap volume is not a plain directory: the kubelet writes each version into a hidden
`..<timestamp>` directory, points the `..data` symlink at it atomically, and exposes every key
as a symlink through `..data`. So we read only the visible names, follow symlinks, and hash
what we read, which makes the snapshot version change exactly when the content does.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import yaml

from extproc.errors import ConfigError, PolicyError
from extproc.policy.key_pools import key_pool_reference_problem
from extproc.policy.model import (
    ApiKey,
    Backend,
    Capacity,
    KeyPool,
    ModelRoute,
    PolicySnapshot,
    QuotaPolicy,
    Route,
)
from extproc.policy.validate import validate_document

MAX_FILE_BYTES = 1 << 20
SUFFIXES = (".yaml", ".yml", ".json")

Document = QuotaPolicy | ApiKey | Route | ModelRoute | KeyPool | Capacity

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """Safe loading, but a key repeated in one mapping is an error: YAML would otherwise keep
    the last value silently, and `limits:` written twice would drop a whole list of quotas."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=False)
            if not isinstance(key, str | int | float | bool):
                continue  # not a field name; validation rejects it with a clearer message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        result: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return result


def _timestamp_as_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    """An unquoted `2027-01-31` stays the text written, as Kubernetes reads it: no policy
    field is a YAML timestamp (`expires` parses its own forms, with an error naming the
    field), and PyYAML's own conversion raises a bare ValueError on `2027-02-30`."""
    return str(loader.construct_scalar(node))


_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


@dataclass(frozen=True, slots=True)
class _Located:
    """A validated object and where it came from, for cross-document error messages."""

    obj: Document
    file: str
    document: int


def parse_documents(text: str, *, file: str, allow_usd: bool = False) -> list[Document]:
    """Parse and validate every document of one file; `file` names it in errors and becomes
    each object's `source`. Empty documents (a stray `---`) are skipped."""
    return [located.obj for located in _parse(text, file=file, allow_usd=allow_usd)]


def validate_file(text: str, *, file: str, allow_usd: bool = False) -> list[Document]:
    """`parse_documents` plus the checks across documents that loading applies (a namespace,
    key, model route, key pool or capacity defined twice; a backend's key pool): what the
    control API's ValidatePolicy and policy-sync answer. One file is part of a set, so a key
    pool it does not define may be defined in another; one it defines is checked."""
    located = _parse(text, file=file, allow_usd=allow_usd)
    _index(located)
    _check_key_pools(located, complete=False)
    return [item.obj for item in located]


def load_directory(
    path: Path, *, allow_usd: bool = False, now: Callable[[], float] = time.time
) -> PolicySnapshot:
    """Build a snapshot from every policy file directly in `path`. Any problem raises, so a
    reload that fails keeps the previous snapshot in service rather than a partial one."""
    return load_directories((path,), allow_usd=allow_usd, now=now)


def load_directories(
    paths: Sequence[Path], *, allow_usd: bool = False, now: Callable[[], float] = time.time
) -> PolicySnapshot:
    """One snapshot from several directories (in Kubernetes: the chart's own ConfigMap and
    the ConfigMaps `policy-sync` collects). With more than one, files are named by their
    full path, so the same file name in two directories stays two sources."""
    located: list[_Located] = []
    contents: list[tuple[str, bytes]] = []
    for path in paths:
        prefix = f"{path}/" if len(paths) > 1 else ""
        for base, file_path in _policy_files(path):
            name = prefix + base
            raw = _read(file_path, name)
            contents.append((name, raw))
            located.extend(_parse(_decode(raw, name), file=name, allow_usd=allow_usd))
    policies, keys = _index(located)
    _check_key_pools(located, complete=True)
    return PolicySnapshot(
        policies=MappingProxyType(policies),
        keys_by_sha256=MappingProxyType(keys),
        routes=tuple(item.obj for item in located if isinstance(item.obj, Route)),
        model_routes=tuple(item.obj for item in located if isinstance(item.obj, ModelRoute)),
        key_pools=tuple(item.obj for item in located if isinstance(item.obj, KeyPool)),
        capacities=tuple(item.obj for item in located if isinstance(item.obj, Capacity)),
        version=_version(contents),
        loaded_at=now(),
        sources=tuple(name for name, _ in contents),
    )


def _parse(text: str, *, file: str, allow_usd: bool) -> list[_Located]:
    """Document indexes count empty documents too, so they match the `---` a reader counts."""
    out: list[_Located] = []
    try:
        for index, data in enumerate(yaml.load_all(text, Loader=_StrictLoader), start=1):
            if data is None:
                continue
            obj = validate_document(data, file=file, document=index, allow_usd=allow_usd)
            out.append(_Located(obj=obj, file=file, document=index))
    except yaml.YAMLError as exc:
        raise PolicyError(file=file, document=None, field=None, problem=_yaml_problem(exc)) from exc
    return out


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Say where (1-based line and column) and what, without PyYAML's multi-line layout."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return f"invalid YAML: {exc}"
    context = getattr(exc, "context", None)
    what = f"{problem} ({context})" if context else problem
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {what}"


def _policy_files(path: Path) -> list[tuple[str, Path]]:
    """Visible *.yaml/*.yml/*.json regular files (after following symlinks), sorted by name.
    Names starting with '.' are the kubelet's `..data` and `..<timestamp>` machinery."""
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError as exc:
        raise ConfigError(f"policy directory {path} does not exist") from exc
    except NotADirectoryError as exc:
        raise ConfigError(f"policy directory {path} is not a directory") from exc
    except OSError as exc:
        raise ConfigError(f"policy directory {path} cannot be read: {exc.strerror}") from exc
    found: list[tuple[str, Path]] = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(SUFFIXES):
            continue
        if entry.is_file():
            found.append((entry.name, Path(entry.path)))
        elif entry.is_symlink() and not os.path.exists(entry.path):
            raise PolicyError(
                file=entry.name, document=None, field=None, problem="is a dangling symlink"
            )
    return sorted(found)


def _read(file_path: Path, name: str) -> bytes:
    """Read at most one byte past the limit, so a huge file costs no more than the limit."""
    try:
        with file_path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PolicyError(
            file=name, document=None, field=None, problem=f"cannot be read: {exc.strerror}"
        ) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise PolicyError(
            file=name,
            document=None,
            field=None,
            problem=f"is larger than 1 MiB ({MAX_FILE_BYTES} bytes); split it into several files",
        )
    return raw


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            file=name,
            document=None,
            field=None,
            problem=f"is not valid UTF-8 (byte offset {exc.start})",
        ) from exc


def _index(located: list[_Located]) -> tuple[dict[str, QuotaPolicy], dict[str, ApiKey]]:
    """Cross-document checks; the error names the later of the two clashing documents."""
    seen_names: dict[tuple[str, str | None, str], _Located] = {}
    seen_namespaces: dict[str, _Located] = {}
    seen_hashes: dict[str, _Located] = {}
    seen_models: dict[tuple[str | None, str], _Located] = {}
    policies: dict[str, QuotaPolicy] = {}
    keys: dict[str, ApiKey] = {}
    for item in located:
        obj = item.obj
        kind = _kind(obj)
        ident = (kind, _scope(obj), obj.name)
        if ident in seen_names:
            what = f"{kind} {_scope(obj) or '(cluster-wide)'}/{obj.name}"
            _clash(item, "metadata.name", what, seen_names[ident])
        seen_names[ident] = item
        if isinstance(obj, Route | KeyPool | Capacity):
            continue
        if isinstance(obj, ModelRoute):
            scope = (obj.namespace, obj.model)
            if scope in seen_models:
                where = f"namespace {obj.namespace!r}" if obj.namespace else "cluster-wide"
                what = f"a ModelRoute for model {obj.model!r} ({where})"
                _clash(item, "spec.model", what, seen_models[scope])
            seen_models[scope] = item
            continue
        if isinstance(obj, QuotaPolicy):
            if obj.namespace in seen_namespaces:
                what = f"a QuotaPolicy for namespace {obj.namespace!r}"
                _clash(item, "metadata.namespace", what, seen_namespaces[obj.namespace])
            seen_namespaces[obj.namespace] = item
            policies[obj.namespace] = obj
        else:
            if obj.sha256 in seen_hashes:
                _clash(item, "spec.sha256", "an ApiKey with this sha256", seen_hashes[obj.sha256])
            seen_hashes[obj.sha256] = item
            keys[obj.sha256] = obj
    return policies, keys


def _clash(item: _Located, field: str, what: str, first: _Located) -> NoReturn:
    problem = (
        f"{what} is already defined as {_scope(first.obj) or '(cluster-wide)'}/{first.obj.name} "
        f"in {first.file} (document {first.document})"
    )
    raise PolicyError(file=item.file, document=item.document, field=field, problem=problem)


def _kind(obj: Document) -> str:
    """The `kind` a document is written with (a KeyPool is a `ProviderKeyPool`)."""
    return "ProviderKeyPool" if isinstance(obj, KeyPool) else type(obj).__name__


def _scope(obj: Document) -> str | None:
    """The namespace a document is defined in; None: cluster-wide (a key pool and a
    capacity always are)."""
    return None if isinstance(obj, KeyPool | Capacity) else obj.namespace


def _check_key_pools(located: list[_Located], *, complete: bool) -> None:
    """Every backend naming a key pool names one that exists and holds keys of the
    backend's provider; the error names the route's document and the backend's `keyPool`.
    `complete` False: these documents are one file of a larger set (`validate_file`), so a
    pool they do not define may be defined elsewhere and only the pools found are checked."""
    pools: dict[str, KeyPool] = {}
    where: dict[str, str] = {}
    for item in located:
        if isinstance(item.obj, KeyPool):
            pools[item.obj.name] = item.obj
            where[item.obj.name] = f"{item.file}, document {item.document}"
    for item in located:
        if isinstance(item.obj, Capacity) and item.obj.key_pool is not None:
            _check_capacity_pool(item, item.obj, pools, where, complete=complete)
        if not isinstance(item.obj, ModelRoute):
            continue
        for i, backend in enumerate(item.obj.backends):
            if not complete and backend.key_pool not in pools:
                continue
            problem = key_pool_reference_problem(backend, pools, where=where)
            if problem is not None:
                raise PolicyError(
                    file=item.file,
                    document=item.document,
                    field=f"spec.backends[{i}].keyPool",
                    problem=problem,
                )


def _check_capacity_pool(
    item: _Located,
    capacity: Capacity,
    pools: dict[str, KeyPool],
    where: dict[str, str],
    *,
    complete: bool,
) -> None:
    """A Capacity naming a key pool names one that exists and holds its provider's keys."""
    if not complete and capacity.key_pool not in pools:
        return
    as_backend = Backend(provider=capacity.provider, model="-", key_pool=capacity.key_pool)
    problem = key_pool_reference_problem(as_backend, pools, where=where)
    if problem is not None:
        raise PolicyError(
            file=item.file, document=item.document, field="spec.keyPool", problem=problem
        )


def _version(contents: list[tuple[str, bytes]]) -> str:
    """Length-prefixed so that no two different file sets can hash the same byte stream."""
    digest = hashlib.sha256()
    for name, raw in sorted(contents):
        encoded = name.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
        digest.update(len(raw).to_bytes(8, "big") + raw)
    return digest.hexdigest()[:16]
