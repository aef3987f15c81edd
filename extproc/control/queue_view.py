"""`GetQueue`: every shared capacity's queue by class, and its limits' counters, as the
fleet's quota store holds them now (what `tokengate ctl queue` shows)."""

from __future__ import annotations

import time
from collections import defaultdict

from extproc.control import control_pb2 as pb
from extproc.errors import QuotaStoreError
from extproc.gate.capacity import capacity_limits
from extproc.gate.runtime import Runtime
from extproc.policy.model import Capacity, Priority
from extproc.quota.windows import describe_limit_period


async def queue_view(rt: Runtime) -> pb.GetQueueResponse:
    try:
        queues = [await _capacity(rt, c) for c in rt.policies.current.capacities]
    except QuotaStoreError:
        return pb.GetQueueResponse(store_up=False)
    return pb.GetQueueResponse(capacities=queues, store_up=True)


async def _capacity(rt: Runtime, capacity: Capacity) -> pb.CapacityQueue:
    limits = capacity_limits(capacity)
    tickets = await rt.store.queue(limits)
    states = await rt.store.peek(limits)
    now = time.time()
    deadlines: dict[str, list[float]] = defaultdict(list)
    for member, score in tickets:  # member "<class>/<request id>", score its deadline
        deadlines[member.split("/", 1)[0]].append(score)
    classes = []
    for klass in Priority:
        longest = capacity.max_wait_s[klass]
        waiting = deadlines.get(klass.value, [])
        # A ticket's deadline is its arrival + the class's maximum: the earliest waited most.
        oldest = max(0.0, now - (min(waiting) - longest)) if waiting else 0.0
        classes.append(
            pb.ClassQueue(
                priority_class=klass.value,
                depth=len(waiting),
                oldest_wait_seconds=oldest,
                max_wait_seconds=longest,
            )
        )
    usage = [
        pb.LimitUsage(
            name=s.scoped.limit.name,
            scope=capacity.name,
            measure=s.scoped.limit.measure.value,
            algorithm=s.scoped.limit.algorithm.value,
            per=describe_limit_period(s.scoped.limit),
            used=s.used,
            limit=s.scoped.limit.amount,
            remaining=s.remaining,
            reset_seconds=s.reset_after,
        )
        for s in states
    ]
    return pb.CapacityQueue(
        name=capacity.name, provider=capacity.provider, models=list(capacity.model_patterns),
        classes=classes, limits=usage,
    )  # fmt: skip
