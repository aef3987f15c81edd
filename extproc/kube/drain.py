"""`tokengate drain-envoy`: the preStop hook that lets in-flight LLM calls finish.

When a gateway pod stops, the kubelet runs each container's preStop hook before it sends
SIGTERM. This one runs in the tokengate container (it has Python; the Envoy image has only a
shell) and talks to Envoy's admin on loopback:

1. `POST /healthcheck/fail`: `/ready` answers 503, so the pod leaves the Service's endpoints
   and new calls go elsewhere;
2. `POST /drain_listeners?graceful`: Envoy asks clients on open connections to go away
   (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY) as their requests end;
3. wait until the `llm` listener has no request in flight (streams can last minutes), but
   at least `min_wait_s` so endpoint removal has propagated, and at most `timeout_s`;
4. touch `done_file`, which the Envoy container's own preStop hook is waiting for.

Only then do both containers get SIGTERM: the sidecar is still there for every request Envoy
is finishing, so each one is settled.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ACTIVE_STAT = "http.llm.downstream_rq_active"


@dataclass(frozen=True, slots=True)
class DrainResult:
    drained: bool  # False: the timeout came first, requests were still in flight
    seconds: float
    in_flight: int


class EnvoyAdmin:
    def __init__(self, address: str, timeout_s: float = 2.0) -> None:
        self._base = f"http://{address}"
        self._timeout_s = timeout_s

    def post(self, path: str) -> None:
        request = urllib.request.Request(self._base + path, method="POST", data=b"")  # noqa: S310
        with urllib.request.urlopen(request, timeout=self._timeout_s):  # noqa: S310 - loopback
            pass

    def active_requests(self) -> int:
        url = f"{self._base}/stats?format=json&filter=^{ACTIVE_STAT}$"
        with urllib.request.urlopen(url, timeout=self._timeout_s) as response:  # noqa: S310
            stats = json.load(response).get("stats", [])
        return sum(int(s.get("value", 0)) for s in stats if s.get("name") == ACTIVE_STAT)


def drain(
    admin: EnvoyAdmin,
    *,
    timeout_s: float,
    min_wait_s: float,
    done_file: Path | None,
    poll_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    wait: Callable[[float], None] = time.sleep,
) -> DrainResult:
    started = clock()
    in_flight = -1
    try:
        admin.post("/healthcheck/fail")
        admin.post("/drain_listeners?graceful&inboundonly")
        while True:
            in_flight = admin.active_requests()
            elapsed = clock() - started
            if (in_flight == 0 and elapsed >= min_wait_s) or elapsed >= timeout_s:
                break
            wait(poll_s)  # the kubelet waits for this hook; polling the admin is the point
    except OSError as exc:
        # Envoy already gone (or its admin refuses): nothing left to drain through it.
        log.warning("drain: Envoy admin unreachable (%s); stopping now", exc)
    finally:
        if done_file is not None:
            done_file.parent.mkdir(parents=True, exist_ok=True)
            done_file.touch()
    seconds = clock() - started
    result = DrainResult(drained=in_flight <= 0, seconds=seconds, in_flight=max(in_flight, 0))
    log.info(
        "drain: %s after %.1fs (%d requests still in flight)",
        "done" if result.drained else "timed out",
        result.seconds,
        result.in_flight,
    )
    return result
