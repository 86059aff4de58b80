"""What one replica holds in memory is never needed by another (scheduler.replicas): two
scheduler apps on one PostgreSQL database, each with its own memory, as two processes would be.

* A heartbeat still in one replica's buffer is not silence: another replica judging hosts lost
  waits for it; a replica that stopped ticking is not waited for.
* A host registered through one replica is known to the other; one declared lost through one is
  asked to register by the other.
* A signed request replayed to the other replica is refused.
* The periodic jobs run on the replica holding the lease; a clean shutdown hands it over at once,
  a crash once it lapses.
* A long-poll on one replica wakes when the other changes the host's assignments
  (LISTEN/NOTIFY), and sync progress reported to one is shown by the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.auth import sign
from scheduler.api.context import CONTEXT
from tests.component.conftest import Agent, FakeClock, Harness, make_config

pytestmark = pytest.mark.postgresql_only

TTL_S = 30.0  # heartbeat_interval_s 10 x heartbeat_misses 3 (make_config)


@pytest.fixture
async def pair(tmp_path: Path, clock: FakeClock) -> AsyncIterator[tuple[Harness, Harness]]:
    config = make_config(tmp_path)
    first, second = Harness(config=config, clock=clock), Harness(config=config, clock=clock)
    await first.start()
    try:
        await second.start()
        try:
            # Past the grace after a start, in which nobody is declared lost.
            clock.advance(TTL_S + 1)
            yield first, second
        finally:
            await second.close()
    finally:
        await first.close()


def through(harness: Harness, host: Agent) -> Agent:
    """``host``'s agent, sending to ``harness`` (the replica it failed over to)."""
    harness.app[CONTEXT].agent_secrets.remember(host.host_id, host.secret.decode())
    return Agent(harness, host.host_id, host.secret)


def host_state(harness: Harness, host_id: str) -> str:
    return harness.committed("SELECT state FROM hosts WHERE id = ?", (host_id,))[0][0]


async def pass_time(clock: FakeClock, seconds: float, *replicas: Harness) -> None:
    """Let ``seconds`` pass with ``replicas`` ticking every few seconds, in that order (the
    first keeps the maintenance lease it holds)."""
    while seconds > 0:
        step = min(4.0, seconds)
        clock.advance(step)
        seconds -= step
        for replica in replicas:
            await replica.tick()


async def test_a_heartbeat_held_by_another_replica_is_not_silence(
    pair: tuple[Harness, Harness], clock: FakeClock
) -> None:
    first, second = pair
    host = first.agent("h1")
    await host.register()
    await first.tick()
    assert await first.app[CONTEXT].maintenance.flush() is True  # first runs the jobs
    await pass_time(clock, TTL_S - 2, first, second)  # both live, neither holds anything
    assert host_state(first, "h1") == "ready"

    clock.advance(0.5)
    # The agent failed over to second: its heartbeat waits in second's memory for a tick.
    assert (await through(second, host).heartbeat()).json["known"] is True
    clock.advance(2.5)  # the last heartbeat written is now older than the TTL
    await first.tick()
    assert host_state(first, "h1") == "ready", "lost while second held a fresh heartbeat"

    await second.tick()  # writes it
    await first.tick()
    assert host_state(first, "h1") == "ready"

    # second crashes: nothing more from it, nor from the host. first waits for second only
    # while second could still be alive; then the host's silence counts in full.
    dead_after_s = first.app[CONTEXT].replica.dead_after_s
    await pass_time(clock, dead_after_s - 1, first)
    assert host_state(first, "h1") == "ready"
    await pass_time(clock, TTL_S, first)
    assert host_state(first, "h1") == "lost"


async def test_hosts_registered_or_lost_through_one_replica_are_known_as_such_by_the_other(
    pair: tuple[Harness, Harness], clock: FakeClock
) -> None:
    first, second = pair
    host = first.agent("h1")
    await host.register()
    beat = await through(second, host).heartbeat()
    assert (beat.status, beat.json["known"]) == (200, True)

    clock.advance(TTL_S + 1)
    await first.tick()  # first holds the lease and declares h1 lost
    assert host_state(first, "h1") == "lost"
    await second.tick()  # second takes the fleet as it now is
    assert (await through(second, host).heartbeat()).json["known"] is False


async def test_a_request_replayed_to_the_other_replica_is_refused(
    pair: tuple[Harness, Harness],
) -> None:
    first, second = pair
    host = first.agent("h1")
    await host.register()
    through(second, host)
    body = b"{}"
    headers = sign(host.secret, "h1", "POST", "/v1/agents/heartbeat", body, now=first.clock())
    headers["Content-Type"] = "application/json"
    accepted = await first.call("POST", "/v1/agents/heartbeat", data=body, headers=headers)
    assert accepted.status == 200, accepted.text
    replayed = await second.call("POST", "/v1/agents/heartbeat", data=body, headers=headers)
    assert (replayed.status, replayed.code) == (401, "unauthenticated")
    assert "replayed" in replayed.json["message"]
    # ...and to the same replica, as before.
    again = await first.call("POST", "/v1/agents/heartbeat", data=body, headers=headers)
    assert again.status == 401


async def test_periodic_jobs_run_on_the_lease_holder_which_hands_over_on_shutdown_or_lapse(
    pair: tuple[Harness, Harness], clock: FakeClock
) -> None:
    first, second = pair
    ones, twos = (h.app[CONTEXT].maintenance for h in pair)
    assert await ones.flush() is True
    assert await twos.flush() is False
    clock.advance(1)
    assert await ones.flush() is True  # renewed
    assert await twos.flush() is False

    # first stops ticking (a crash): second waits for the lease to lapse, then takes it.
    lease_s = first.app[CONTEXT].replica.lease_s
    clock.advance(lease_s / 2)
    assert await twos.flush() is False
    clock.advance(lease_s)
    assert await twos.flush() is True
    assert await ones.flush() is False  # back, but second holds it now

    # A clean shutdown gives it up at once.
    await second.close()
    assert await ones.flush() is True
    rows = first.committed("SELECT id FROM replicas")
    assert [r[0] for r in rows] == [first.app[CONTEXT].replica.id]


async def test_a_long_poll_on_one_replica_wakes_when_the_other_assigns_its_host(
    pair: tuple[Harness, Harness],
) -> None:
    first, second = pair
    project = await first.project("alpha")
    host = first.agent("h1")
    await host.register()
    poller = through(second, host)
    version = (await poller.assignments())["version"]
    # The poll waits up to 20 s; the other replica's change must end it, not the timeout.
    poll = asyncio.create_task(poller.assignments(since=version, wait=20))
    await asyncio.sleep(0.3)
    assert not poll.done()
    notebook = (await project.run(gpu=1)).json
    answer = await asyncio.wait_for(poll, 15)
    assert answer["version"] != version
    assert [a["notebook"] for a in answer["items"]] == [notebook["id"]]


async def test_sync_progress_reported_to_one_replica_is_shown_by_the_other(
    pair: tuple[Harness, Harness],
) -> None:
    first, second = pair
    project = await first.project("alpha")
    host = first.agent("h1")
    await host.register()
    notebook = (await project.run(gpu=1)).json
    progress = {
        "phase": "restore",
        "files_done": 40,
        "files_total": 100,
        "bytes_done": 4096,
        "bytes_total": 10240,
        "at": first.clock(),
    }
    report = {"notebook": notebook["id"], "generation": 1, "progress": progress}
    assert (await host.call("POST", "/v1/agents/progress", report)).status == 200
    assert (await project.get(notebook["id"]))["progress"]["files_done"] == 40

    await first.tick()  # written
    seen = await second.call("GET", f"/v1/notebooks/{notebook['id']}", token=project.read)
    assert seen.json["progress"]["files_done"] == 40

    report["progress"] = None  # the sync ended
    assert (await host.call("POST", "/v1/agents/progress", report)).status == 200
    await first.tick()
    seen = await second.call("GET", f"/v1/notebooks/{notebook['id']}", token=project.read)
    assert seen.json.get("progress") is None
