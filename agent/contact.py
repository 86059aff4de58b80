"""Contact with the scheduler: whether this agent may still act for the notebooks it was given.

The scheduler declares a host lost when it has been silent for ``heartbeat_misses`` heartbeat
intervals (its TTL), and may then start the host's notebooks elsewhere. Past that long without
an answer this agent must not write a notebook's history any more (it takes no checkpoints,
:mod:`agent.notebook_sync`). Both figures come from the scheduler: the interval with every
register and heartbeat reply, the miss count with every heartbeat reply (3 until the first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgspec

from common import wire

#: Until the scheduler tells: what the agent assumes before its first register reply.
DEFAULT_HEARTBEAT_INTERVAL_S = 10.0
#: Until the first heartbeat reply: the reply's own default, so the figure lives in one place.
DEFAULT_HEARTBEAT_MISSES: int = next(
    f.default for f in msgspec.structs.fields(wire.HeartbeatReply) if f.name == "heartbeat_misses"
)


class Contact(Protocol):
    def in_contact(self) -> bool:
        """False once the scheduler may have declared this host lost (silent past its TTL)."""
        ...


class SchedulerContact:
    """When the scheduler last answered a register or a heartbeat (agent clock), and the
    heartbeat interval and miss count it asked for."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.heartbeat_interval_s = DEFAULT_HEARTBEAT_INTERVAL_S
        self.heartbeat_misses = DEFAULT_HEARTBEAT_MISSES
        self.last_contact = clock()

    def registered(self, reply: wire.RegisterReply) -> None:
        self.heartbeat_interval_s = reply.heartbeat_interval_s
        self.last_contact = self.clock()

    def heartbeat_answered(self, reply: wire.HeartbeatReply) -> None:
        self.heartbeat_interval_s = reply.heartbeat_interval_s
        self.heartbeat_misses = reply.heartbeat_misses
        self.last_contact = self.clock()

    def in_contact(self) -> bool:
        """Whether the scheduler has heard from us within the heartbeat TTL. Past it, the
        scheduler may have declared this host lost and started its notebooks elsewhere."""
        ttl = self.heartbeat_interval_s * self.heartbeat_misses
        return self.clock() - self.last_contact <= ttl
