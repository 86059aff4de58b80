"""Issue 13: SIGKILL one of two scheduler replicas while 200 notebooks are run, stopped and
started through both.

Real parts: a fresh PostgreSQL database (``nbfleet-scheduler migrate``), two ``nbfleet-scheduler
run`` processes on it, each its own port and log. The agents are simulated in this process
(:mod:`tests.support.sim_agents`: 10 hosts × 8 GPUs sending through the agent's own client,
``agent/client.py``, failing over, retrying every report until acknowledged; nothing runs
Docker). The users are the CLI's own client (``cli/client.py``) in threads
(:mod:`tests.support.sim_users`), half their requests listing replica 1 first, half replica 2.

Every notebook (1 GPU: 200 on 80 GPUs, so many QUEUE) is run, stopped, started, and 140 stopped
again. Half way through, with user requests (and if the timing allows agents' reports) in
flight, replica 1, holder of the maintenance lease, gets SIGKILL: the queue stands still until
replica 2 takes the lease over. Replica 1 is started again, and through both 40 stopped
notebooks are started (a queue again) and 30 running ones stopped. Then: every notebook is in
the state its last request asked for and no host was lost; the ledger holds per (notebook,
generation) the largest minutes the agents reported (none doubled or lost); no GPU was handed
out twice (as the agents saw it, and in the API at the end) and the use counters match; and
within each project notebooks left QUEUED in the order they entered it (from their state
history). On failure the replicas' logs and what the agents saw are printed.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from common import wire
from common.billing import billed_minutes
from common.config import SchedulerConfig, load
from common.states import NotebookState
from scheduler.agent_secrets import add_host
from tests.e2e.cluster import REPO, free_port, scheduler_toml
from tests.support.postgres import PostgresDatabases, committed_rows
from tests.support.sim_agents import SimFleet
from tests.support.sim_users import Tracked, Users, eventually

pytestmark = pytest.mark.e2e

S = NotebookState
HOSTS, GPUS_PER_HOST = 10, 8
PROJECTS = ("crash-a", "crash-b", "crash-c", "crash-d")
NOTEBOOKS = 200
#: User requests answered before replica 1 is killed (of 740 in the first round).
KILL_AFTER = 370
FRAMEWORK, EDITOR = "sim", "sim-editor"
History = dict[str, list[wire.StateChange]]


def replicas_toml(root: Path, database_url: str, port: int) -> str:
    shared = scheduler_toml(
        root,
        port,
        database_url=database_url,
        secrets_key_file=f"{root}/agent_secrets.key",
        ssh_host_key_file=f"{root}/ssh_host_ed25519_key",
        heartbeat_interval_s=3.0,
        loop_interval_s=1.0,
    )
    # Quotas above any project's 50 notebooks: the queue here waits for capacity.
    return (
        shared
        + f"""
[quota]
gpus = 64
notebooks = 64

[catalog.frameworks.{FRAMEWORK}]
image = "nbfleet/simulated-never-pulled:0"
editors = ["{EDITOR}"]

[catalog.editors.{EDITOR}]
port = 8080
command = ["sim-editor", "--port", "{{port}}"]
url_path = "/?token={{token}}"
"""
    )


class Replicas:
    """Two ``nbfleet-scheduler run`` processes on one config file (so one database), each on a
    port and log of its own (``replica-1.log``, ``replica-2.log``), and the database's URL."""

    def __init__(self, root: Path, database_url: str) -> None:
        self.root = root
        self.database_url = database_url
        self.ports = [free_port(), free_port()]
        assert self.ports[0] != self.ports[1]
        self.config = root / "scheduler.toml"
        # Its listen is replica 1's; each replica is given its own in run().
        self.config.write_text(replicas_toml(root, database_url, self.ports[0]))
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        self.logs = [root / "replica-1.log", root / "replica-2.log"]
        self.procs: list[subprocess.Popen[bytes] | None] = [None, None]
        self.session = aiohttp.ClientSession()

    async def start(self) -> dict[str, tuple[bytes, list[str]]]:
        """Migrate, make the hosts' secrets, start replica 1 alone (it makes the shared key
        files), then replica 2. Returns each host's secret and URLs: half the hosts list
        replica 1 first, half replica 2."""
        argv = [sys.executable, "-m", "scheduler.main", "migrate", "--config", str(self.config)]
        migrate = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert migrate.returncode == 0, f"migrate failed: {migrate.stdout}{migrate.stderr}"
        config = load(SchedulerConfig, self.config, env_prefix="NBFLEET_SCHEDULER_")
        # Before the replicas start, so both know every host from their first request.
        secrets = {f"sim-{n:02d}": await add_host(config, f"sim-{n:02d}") for n in range(HOSTS)}
        await self.run(0)
        await self.run(1)
        return {
            host: (secret.encode(), self.urls if n % 2 == 0 else self.urls[::-1])
            for n, (host, secret) in enumerate(sorted(secrets.items()))
        }

    async def run(self, n: int) -> None:
        """Start replica ``n`` (0 or 1) and wait until it answers."""
        env = {**os.environ, "NBFLEET_SCHEDULER_LISTEN": f"127.0.0.1:{self.ports[n]}"}
        argv = [sys.executable, "-m", "scheduler.main", "run", "--config", str(self.config)]
        with open(self.logs[n], "ab") as log:
            proc = subprocess.Popen(
                argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        self.procs[n] = proc

        async def healthy() -> bool:
            assert proc.poll() is None, f"replica {n + 1} exited; see {self.logs[n]}"
            async with self.session.get(self.urls[n] + "/health") as response:
                return response.status == 200

        await eventually(f"replica {n + 1} to answer {self.urls[n]}/health", healthy, 30)

    def stop(self, n: int, sig: int = signal.SIGTERM) -> None:
        """SIGTERM (a clean shutdown) or ``sig``, then SIGKILL if it is still there."""
        proc = self.procs[n]
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    async def lease_holder(self) -> int | None:
        """Which replica (0, 1) holds the maintenance lease now; ``None``: none alive does."""
        sql = (
            "SELECT r.name FROM leases l JOIN replicas r ON r.id = l.holder "
            "WHERE l.name = 'maintenance' AND l.until > ?"
        )
        rows = await asyncio.to_thread(committed_rows, self.database_url, sql, (time.time(),))
        pids = [None if proc is None else proc.pid for proc in self.procs]
        # A replica's name is "host:pid".
        pid = int(rows[0][0].rpartition(":")[2]) if rows else None
        return pids.index(pid) if pid in pids else None

    async def crash(self, users: Users, fleet: SimFleet) -> dict[str, Any]:
        """Once ``KILL_AFTER`` user requests were answered and others run, SIGKILL replica 1
        (preferably while an agent's report is in flight there too); wait for replica 2 to
        take the maintenance lease over; start replica 1 again. Returns what happened."""

        def ready() -> bool:
            return users.done >= KILL_AFTER and users.executing > 0

        await eventually(f"{KILL_AFTER} user requests answered, more executing", ready, 120, 0.005)
        deadline = time.monotonic() + 3
        while not fleet.reports_in_flight[self.urls[0]] and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        assert await self.lease_holder() == 0, "replica 1 does not hold the maintenance lease"
        seen = {
            "user requests executing": users.executing,
            "agent reports in flight": fleet.reports_in_flight[self.urls[0]],
        }
        self.stop(0, signal.SIGKILL)
        killed = time.monotonic()

        async def moved() -> bool:
            return await self.lease_holder() == 1

        await eventually("replica 2 to take the lease over from replica 1", moved, 60, 0.5)
        seen["lease moved after (s)"] = round(time.monotonic() - killed, 1)
        await self.run(0)
        return seen

    async def close(self) -> None:
        self.stop(0)
        self.stop(1)
        await self.session.close()

    def dump(self, lines: int = 80) -> str:
        shown = []
        for log in self.logs:
            text = log.read_text(errors="replace") if log.exists() else ""
            shown.append(f"----- {log.name}, last {lines} lines -----")
            shown += text.splitlines()[-lines:]
        return "\n".join(shown)


async def script(users: Users, nb: Tracked) -> None:
    """One notebook's first round: run, stop, start, and stop again unless it keeps running."""
    pause = random.Random(nb.seq)
    await users.run(nb)
    await asyncio.sleep(pause.uniform(0, 1.5))
    await users.stop(nb)
    await users.reached(nb, S.STOPPED)
    await users.start(nb)
    if not nb.keep_running:
        await asyncio.sleep(pause.uniform(0, 1.5))
        await users.stop(nb)


@pytest.fixture
async def replicas(tmp_path: Path, postgres_databases: PostgresDatabases):
    database_url = postgres_databases.empty()
    running = Replicas(tmp_path, database_url)
    try:
        yield running
    finally:
        await running.close()
        postgres_databases.drop(database_url)


async def test_a_replica_killed_mid_load_loses_and_doubles_nothing(replicas: Replicas) -> None:
    notebooks = [
        Tracked(seq, PROJECTS[seq % len(PROJECTS)], keep_running=seq % 10 < 3)
        for seq in range(NOTEBOOKS)
    ]
    tasks: list[asyncio.Task[Any]] = []
    fleet = users = None
    try:
        fleet = SimFleet(await replicas.start(), gpus_per_host=GPUS_PER_HOST)
        admin = (replicas.root / "admin.token").read_text().strip()
        users = Users(replicas.urls, admin, framework=FRAMEWORK, editor=EDITOR)
        await users.create_projects(PROJECTS)
        await fleet.start()
        tasks += [
            asyncio.create_task(users.watch()),
            asyncio.create_task(replicas.crash(users, fleet)),
        ]
        await asyncio.gather(*(script(users, nb) for nb in notebooks))
        crashed = await tasks[1]
        # Replica 1 is back. Through both, 40 stopped notebooks are started (20 more than
        # fit) and then 30 running ones stopped: replica 2, holding the lease, places the queue.
        waking = [nb for nb in notebooks if not nb.keep_running][:40]
        resting = [nb for nb in notebooks if nb.keep_running][:30]
        await asyncio.gather(*(users.reached(nb, S.STOPPED) for nb in waking))
        await asyncio.gather(*(users.start(nb) for nb in waking))
        await asyncio.gather(*(users.stop(nb) for nb in resting))
        for nb in waking + resting:
            nb.keep_running = not nb.keep_running
        await users.settled(notebooks)
        fleet.freeze_usage()
        await fleet.drained(30)
        failures, stats = await check_everything(replicas, users, fleet, notebooks)
        print(
            f"replica crash: {crashed}; user requests {users.requests}, unanswered "
            f"{len(users.unanswered)}; agent URL switches {sum(fleet.switches.values())}; "
            f"transition outcomes {dict(fleet.outcomes)}; {stats}"
        )
        assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:60])
    except BaseException:
        print(replicas.dump())
        if fleet is not None:
            print("agents saw:\n" + ("\n".join(fleet.problems[:30]) or "nothing wrong"))
        raise
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if fleet is not None:
            await fleet.stop()
        if users is not None:
            users.close()


async def check_everything(
    replicas: Replicas, users: Users, fleet: SimFleet, notebooks: list[Tracked]
) -> tuple[list[str], dict[str, int]]:
    """Every check after the notebooks settled: failures, and how much each check judged."""
    failures = [f"agent saw: {p}" for p in fleet.problems]
    if fleet.sent != fleet.reported:
        failures.append("usage figures were sent but never acknowledged")
    hosts = await users.answer("the host list", "admin", "/v1/admin/hosts", wire.HostList)
    failures += [f"host {h.id} is {h.state}" for h in hosts.items if h.state != "ready"]
    final = {nb.id: users.states[nb.id] for nb in notebooks}
    histories: History = {}

    async def history(nb: Tracked) -> None:
        path = f"/v1/notebooks/{nb.id}/history"
        what = f"the history of {nb.id}"
        histories[nb.id] = await users.answer(what, nb.project, path, list[wire.StateChange])

    await asyncio.gather(*(history(nb) for nb in notebooks))
    sql = "SELECT notebook_id, generation, billed_minutes FROM usage"
    ledger = await asyncio.to_thread(committed_rows, replicas.database_url, sql)
    failures += ledger_failures(histories, fleet.reported, {(n, g): m for n, g, m in ledger})

    # GPUs: a running notebook holds one of its host's, no other holds any, none is held twice.
    owners: dict[str, str] = {}
    for nb in final.values():
        held = [g.uuid for g in nb.gpus]
        want = 1 if nb.state == S.RUNNING else 0
        if len(held) != want or (want and held[0] not in fleet.agents[nb.host].gpus):
            failures.append(f"{nb.state} notebook {nb.id} holds GPUs {held} on {nb.host}")
        failures += [f"GPU {u} held by {owners[u]} and {nb.id}" for u in held if u in owners]
        owners.update((u, nb.id) for u in held)
    for project in PROJECTS:
        mine = await users.answer(f"{project}'s quota", project, "/v1/quota", wire.Project)
        running = sum(1 for n in final.values() if n.project == project and n.state == S.RUNNING)
        if mine.used is None or (mine.used.gpus, mine.used.notebooks) != (running, running):
            failures.append(f"project {project} counts {mine.used} in use; {running} run")

    violations, judged = queue_order(final, histories, users.entered_by, users.unqueued_by)
    failures += violations
    billed = sum(1 for key in fleet.reported if key[0] in final)
    return failures, {"runs with agents' minutes": billed, "queue pairs judged": judged}


def periods(changes: list[wire.StateChange], state: NotebookState) -> Iterator[tuple]:
    """Each entry into ``state``, with the next change of its generation (``None``: none)."""
    for k, change in enumerate(changes):
        if change.state == state:
            yield (
                change,
                next((c for c in changes[k + 1 :] if c.generation == change.generation), None),
            )


def ledger_failures(
    histories: History, reported: dict[tuple[str, int], int], ledger: dict[tuple[str, int], int]
) -> list[str]:
    """The ledger must hold, per run, the agents' largest figure; for a run whose RUNNING the
    scheduler applied but never acknowledged (its report was then refused after a stop), the
    scheduler's own commenced minutes (``base_minutes`` is above any of those)."""
    expected = dict(reported)
    for nb_id, changes in histories.items():
        for running, left in periods(changes, S.RUNNING):
            own = billed_minutes(running.at, left.at) if left is not None else 0
            key = (nb_id, running.generation)
            expected[key] = max(expected.get(key, 0), own)
    return [
        f"ledger: notebook={nb} generation={gen} billed {ledger.get((nb, gen))} minutes, "
        f"expected {expected.get((nb, gen))} (the agents reported {reported.get((nb, gen))})"
        for nb, gen in sorted(set(expected) | set(ledger))
        if ledger.get((nb, gen)) != expected.get((nb, gen))
    ]


def queue_order(
    final: dict[str, wire.Notebook],
    histories: History,
    entered_by: dict[tuple[str, int], float],
    unqueued_by: dict[tuple[str, int], float],
) -> tuple[list[str], int]:
    """Queue entries passed over while later entries of their project (in the scheduler's
    order: queued_at, created_at, id) were placed, and how many pairs could be judged. Every
    notebook is 1 GPU of one kind and no quota binds, so none may overtake another of its
    project.

    Times in a history are taken before a transaction waits for the writers' lock, so they
    order commits only roughly. A pair (A before B) is judged only when A was surely waiting
    as the dispatch that placed B read the queue: A's entry was committed before that dispatch
    began (``entered_by``), and A left the queue in a later dispatch, or by a stop stamped
    after that dispatch had surely committed (``unqueued_by`` B, from listings)."""
    queues: dict[str, list[tuple]] = {}
    for nb_id, changes in histories.items():
        for queued, left in periods(changes, S.QUEUED):
            left_at, how = (math.inf, None) if left is None else (left.at, left.state)
            entry = (queued.at, final[nb_id].created_at, nb_id, queued.generation, left_at, how)
            queues.setdefault(final[nb_id].project, []).append(entry)
    found, judged = [], 0
    for project, queue in queues.items():
        queue.sort()
        for i, (queued_at, _, a, a_generation, a_left, a_how) in enumerate(queue):
            committed = entered_by.get((a, a_generation), math.inf)
            overtook = []
            for _, _, b, b_generation, b_left, b_how in queue[i + 1 :]:
                if b_how != S.STARTING or committed >= b_left:
                    continue  # not placed, or not surely after A's entry
                if a_how == S.STARTING or a_left > unqueued_by.get((b, b_generation), math.inf):
                    judged += 1
                    if a_left > b_left:
                        overtook.append((b_left, b, b_generation))
            if overtook:
                first = min(overtook)
                found.append(
                    f"queue of {project}: {a} (generation {a_generation}; queued at "
                    f"{queued_at:.3f}, committed by {committed:.3f}) waited until "
                    f"{a_left:.3f} ({a_how}) while {len(overtook)} later entries were placed, "
                    f"the first {first[1]} (generation {first[2]}) at {first[0]:.3f}; its "
                    "history: "
                    + ", ".join(f"{c.state}@{c.at:.3f}/g{c.generation}" for c in histories[a])
                )
    return found, judged
