"""Validation of `ModelRoute` documents: a model name as clients send it, and the backends
that serve it in the order they are tried (the first, then the fallbacks).

The name is matched exactly on every governed request, so it is checked here for what would
make it silently never match: whitespace, control or invisible characters, and glob
characters, which QuotaPolicy's `models.allow` reads as patterns but a route does not. A
backend names a provider (its schema, upstream and key) and that provider's own model name,
and optionally the `ProviderKeyPool` whose keys serve it (that it exists and holds keys of the
backend's provider is checked by the loader, across documents); the same backend twice would
be a retry, which is Envoy's retry policy, not a fallback.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping

from extproc.policy._fields import (
    Doc,
    check_fields,
    dns_label,
    list_,
    mapping,
    required,
    show,
    token_count,
)
from extproc.policy.model import DEFAULT_BACKEND_MAX_TOKENS, Backend, ModelRoute
from extproc.policy.routes import PROVIDERS

MAX_BACKENDS = 4
MODEL_NAME_MAX = 200
_FIELDS = ("model", "backends")
_BACKEND_FIELDS = ("provider", "model", "maxTokens", "keyPool")
# Cc: control characters; Cf: invisible format characters (zero-width space, BOM, ...).
_INVISIBLE = ("Cc", "Cf")
_GLOB = ("*", "?")


def model_route_document(
    doc: Doc, spec: Mapping[str, object], *, name: str, namespace: str | None
) -> ModelRoute:
    check_fields(doc, spec, _FIELDS, "spec.")
    model = model_name(doc, required(doc, spec, "model", "spec."), "spec.model")
    for char in _GLOB:
        if char in model:
            doc.fail(
                "spec.model",
                f"is matched exactly, so {char!r} is not a wildcard here; write one "
                f"ModelRoute per model name, got {model!r}",
            )
    backends = _backends(doc, required(doc, spec, "backends", "spec."))
    for i, backend in enumerate(backends):
        if namespace is not None and backend.key_pool is not None:
            # Pools hold the platform's provider keys, and a team's ConfigMap is checked on
            # its own (policy sync) where another file's pools cannot be seen.
            doc.fail(
                f"spec.backends[{i}].keyPool",
                "only a cluster-wide ModelRoute (no metadata.namespace, written by the "
                "platform team) may name a provider key pool",
            )
    return ModelRoute(
        name=name, namespace=namespace, model=model, backends=backends, source=doc.file
    )


def model_name(doc: Doc, value: object, field: str) -> str:
    """A model name as an API carries it in JSON: one token, no spaces, printable."""
    if not isinstance(value, str):
        doc.fail(field, f"must be a model name (a string), got {show(value)}")
    if not value:
        doc.fail(field, "must not be empty")
    if len(value) > MODEL_NAME_MAX:
        doc.fail(field, f"must be at most {MODEL_NAME_MAX} characters, got {len(value)}")
    for position, char in enumerate(value):
        if char.isspace() or unicodedata.category(char) in _INVISIBLE:
            doc.fail(
                field,
                "must not contain whitespace or control characters; "
                f"found {char!r} at position {position}",
            )
    return value


def _backends(doc: Doc, value: object) -> tuple[Backend, ...]:
    items = list_(doc, value, "spec.backends")
    if not items:
        doc.fail("spec.backends", "must name at least one backend")
    if len(items) > MAX_BACKENDS:
        doc.fail("spec.backends", f"must name at most {MAX_BACKENDS} backends, got {len(items)}")
    backends: list[Backend] = []
    seen: dict[tuple[str, str], int] = {}
    for i, item in enumerate(items):
        backend = _backend(doc, item, f"spec.backends[{i}]")
        key = (backend.provider, backend.model)
        if key in seen:
            doc.fail(
                f"spec.backends[{i}]",
                f"repeats spec.backends[{seen[key]}] ({backend.provider} {backend.model}); "
                "a fallback must be another backend (retrying one is Envoy's retry policy)",
            )
        seen[key] = i
        backends.append(backend)
    return tuple(backends)


def _backend(doc: Doc, value: object, field: str) -> Backend:
    item = mapping(doc, value, field)
    check_fields(doc, item, _BACKEND_FIELDS, f"{field}.")
    provider = required(doc, item, "provider", f"{field}.")
    if not isinstance(provider, str) or provider not in PROVIDERS:
        doc.fail(
            f"{field}.provider", f"must be one of {', '.join(PROVIDERS)}; got {show(provider)}"
        )
    pool = item.get("keyPool")
    return Backend(
        provider=provider,
        model=model_name(doc, required(doc, item, "model", f"{field}."), f"{field}.model"),
        max_tokens=token_count(
            doc, item.get("maxTokens", DEFAULT_BACKEND_MAX_TOKENS), f"{field}.maxTokens"
        ),
        key_pool=None if pool is None else dns_label(doc, pool, f"{field}.keyPool"),
    )
