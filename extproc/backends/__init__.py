"""Backend health, fleet-wide: a circuit breaker per backend and the headroom its provider
reports, kept in the quota store so every sidecar skips a failing or exhausted backend
before sending to it. `health` holds the shared vocabulary and the store interface; the
memory and Redis stores implement it with the same semantics (one test suite runs both)."""
