"""What was spent and what happened: Prometheus metrics, enforcement events, the
per-caller spending ledger."""
