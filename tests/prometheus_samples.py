"""Reading a metric in a test the way a scrape sees it: through the registry's public
`get_sample_value` (sample names as /metrics renders them, e.g. a counter's `_total`), never
through prometheus-client's private fields."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

_SUFFIXES = ("", "_total", "_count", "_sum", "_bucket", "_created")


def sample_value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """One sample's value. A labelled child nothing has touched yet reads 0, as it would once
    created; a name the registry does not define fails, so a misspelt name cannot pass as 0."""
    value = registry.get_sample_value(name, labels)
    if value is not None:
        return value
    families = {family.name for family in registry.collect()}
    assert any(name == f"{family}{suffix}" for family in families for suffix in _SUFFIXES), (
        f"no metric {name!r} in the registry"
    )
    return 0.0
