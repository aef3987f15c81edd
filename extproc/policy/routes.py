"""Validation of `Route` documents: the paths the gateway forwards without governing them.

The gateway denies every route it does not govern, because the provider account behind it is
shared by every tenant: an object endpoint (files, batches, fine-tunes, stored responses, …)
forwarded with the shared key would let one tenant read or delete another's objects. A Route
opens one path (or one prefix) for some methods, to some namespaces, under limits of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from extproc.policy._fields import (
    Doc,
    check_fields,
    dns_label,
    limit_list,
    list_,
    required,
    show,
)
from extproc.policy.model import EVERY_NAMESPACE, Measure, Route

PROVIDERS = ("openai", "anthropic")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_FIELDS = ("methods", "path", "provider", "namespaces", "limits")
# What Envoy hands the sidecar after normalising (see README "What is forwarded"): no dot
# segments, no doubled or escaped slashes, no parameters, no query; a route names exactly that.
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()+,=:@-]+(/[A-Za-z0-9._~!$&'()+,=:@-]+)*(/\*)?")
_ROUTE_MEASURES = (Measure.REQUESTS, Measure.CONCURRENT)


def route_document(
    doc: Doc, spec: Mapping[str, object], *, name: str, namespace: str | None
) -> Route:
    check_fields(doc, spec, _FIELDS, "spec.")
    limits = limit_list(doc, spec.get("limits", []), allow_usd=False)
    for i, limit in enumerate(limits):
        if limit.measure not in _ROUTE_MEASURES:
            doc.fail(
                f"spec.limits[{i}]",
                "a route reads no body, so only requests and concurrent limits apply to it",
            )
    return Route(
        name=name,
        namespace=namespace,
        methods=_methods(doc, required(doc, spec, "methods", "spec.")),
        path=_path(doc, required(doc, spec, "path", "spec.")),
        provider=_provider(doc, required(doc, spec, "provider", "spec.")),
        namespaces=_namespaces(doc, spec.get("namespaces"), namespace),
        limits=limits,
        source=doc.file,
    )


def _methods(doc: Doc, value: object) -> tuple[str, ...]:
    items = list_(doc, value, "spec.methods")
    if not items:
        doc.fail("spec.methods", "must name at least one method, e.g. [GET]")
    for i, method in enumerate(items):
        if method not in METHODS:
            doc.fail(
                f"spec.methods[{i}]", f"must be one of {', '.join(METHODS)}; got {show(method)}"
            )
    return tuple(str(m) for m in dict.fromkeys(items))


def _path(doc: Doc, value: object) -> str:
    if not isinstance(value, str) or not _PATH.fullmatch(value) or _dot_segment(value):
        doc.fail(
            "spec.path",
            "must be a normalised absolute path such as /v1/models, or a prefix such as "
            f"/v1/files/* (no query, '.' or '..' segments, '//', '%' or ';'); got {show(value)}",
        )
    return value


def _dot_segment(path: str) -> bool:
    return any(segment in (".", "..") for segment in path.split("/"))


def _provider(doc: Doc, value: object) -> str:
    if value not in PROVIDERS:
        doc.fail("spec.provider", f"must be one of {', '.join(PROVIDERS)}; got {show(value)}")
    return str(value)


def _namespaces(doc: Doc, value: object, namespace: str | None) -> tuple[str, ...]:
    """A namespaced Route (a team's own ConfigMap) opens the path for that namespace only;
    only a cluster-wide one may name others or every namespace."""
    if value is None:
        return (namespace,) if namespace is not None else (EVERY_NAMESPACE,)
    items = list_(doc, value, "spec.namespaces")
    if not items:
        doc.fail("spec.namespaces", "must not be empty; use ['*'] for every namespace")
    names = tuple(
        item if item == EVERY_NAMESPACE else dns_label(doc, item, f"spec.namespaces[{i}]")
        for i, item in enumerate(items)
    )
    if namespace is not None and names != (namespace,):
        doc.fail(
            "spec.namespaces",
            f"a Route in namespace {namespace!r} applies to that namespace only; remove "
            "spec.namespaces or put the Route in the platform team's policies (no namespace)",
        )
    return tuple(str(n) for n in names)
