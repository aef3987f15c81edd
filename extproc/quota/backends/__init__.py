"""Quota store implementations with identical semantics: `memory` (one process) and `redis`
(the fleet, one Lua round trip per decision)."""
