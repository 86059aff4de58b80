"""The agent's contact with the scheduler: its TTL is the scheduler's interval × miss count."""

from __future__ import annotations

from agent.contact import SchedulerContact
from common import wire
from tests.fakes.inventory import FakeClock


def test_the_miss_count_comes_from_the_heartbeat_reply() -> None:
    clock = FakeClock()
    contact = SchedulerContact(clock)
    # Before any reply: the defaults, 10 s × 3.
    clock.advance(30)
    assert contact.in_contact()
    clock.advance(0.1)
    assert not contact.in_contact()

    contact.heartbeat_answered(
        wire.HeartbeatReply(known=True, heartbeat_interval_s=10, heartbeat_misses=6)
    )
    clock.advance(60)
    assert contact.in_contact()
    clock.advance(0.1)
    assert not contact.in_contact()
