"""Simulated agents: many GPU hosts in the test's own process, speaking the real agent protocol
(``common/wire/agent.py``, signed with :func:`common.auth.sign`) and running nothing.

Each :class:`SimAgent` behaves towards the scheduler like ``agent/app.py`` does: it registers,
heartbeats at the interval the scheduler replies (registering again when told
``known=false``), long-polls its assignments, and reports through an outbox that keeps every
report until a replica acknowledges it, billed minutes before transitions (as
``agent/report.py`` sends them, so a run's minutes are in before its end is applied). Every
request goes through the agent's own client, :class:`agent.client.SchedulerClient` (signed,
failing over to the next URL at once when one gives no answer), and is retried after
:class:`agent.client.Backoff`'s delays, as the agent does. Containers are pretend: a
notebook assigned STARTING becomes RUNNING after a short delay derived from its id and
generation, one the scheduler set STOPPING (or DELETING) becomes STOPPED (DELETED) the same
way.

Billed minutes are invented, and deterministic in what happened: a run's figure is
``base_minutes`` once a replica acknowledged its RUNNING report, and grows by one every
``usage_interval_s`` while it runs here. ``base_minutes`` is larger than any figure the
scheduler computes itself for a run of a test's length, so the ledger must show exactly the
agents' figures.

API:

``SimFleet(hosts, *, gpus_per_host=8, usage_interval_s=1.0, base_minutes=10)``
    ``hosts`` maps each host id to ``(secret, scheduler URLs in the order it tries them)``.
    Made in the event loop that runs it (it opens the agents' HTTP session).
    ``await start()`` registers every host (retrying until a replica accepts) and starts its
    loops; ``freeze_usage()`` stops counting minutes (figures already queued are still sent);
    ``await drained(timeout_s)`` waits until every outbox is empty; ``await stop()``.
    ``agents[host].gpus``: the GPU UUIDs a host registered.

What the fleet observed, for the test to judge:

``reported``: ``{(notebook, generation): the largest billed_minutes a replica acknowledged}``;
``sent``: the largest each send carried (equal to ``reported`` once drained).
``problems``: what no correct scheduler makes an agent see: a GPU assigned to a notebook
    while another one still holds it on that host, a notebook taken from a host while its
    container runs, a RUNNING assignment for a run the host never started, being asked to
    register again (the host was declared lost), a 4xx or 5xx answer or an unreadable one.
``outcomes``: a Counter of ``"<STATE> <outcome>"`` per transition report answered.
``switches``: how often a host's client moved to another scheduler URL; ``reports_in_flight``:
    by URL, transition and usage reports sent there and not answered yet (each attempt the
    clients make, as the fleet's HTTP session traces it).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import aiohttp

from agent.client import Backoff, SchedulerClient, SchedulerUnavailable
from common import wire
from common.errors import ApiError
from common.states import NotebookState

log = logging.getLogger(__name__)

S = NotebookState
T = TypeVar("T")
P = ParamSpec("P")

GPU_MODEL, GPU_MEMORY_MB = "NVIDIA H100 80GB HBM3", 81559
_GPU_NAMESPACE = uuid.UUID("0b6f6f2e-4a8e-4d7c-9a55-1c3f0e2d9b71")
LONG_POLL_S = 25
BATCH = 100
REPORTS = frozenset({"/v1/agents/transitions", "/v1/agents/usage"})
#: States in which a pretend container exists and holds the run's GPUs.
HOLDING = frozenset({S.STARTING, S.RUNNING, S.STOPPING, S.DELETING})
#: The HTTP statuses of the replies to the request the current task sends through
#: :meth:`SimAgent.send` (the fleet's session trace adds them).
_REPLIES: ContextVar[list[int] | None] = ContextVar("sim_agent_replies", default=None)


def _backoff() -> Backoff:
    """Retries within a test's seconds: full jitter, 0.05 s to 2 s."""
    return Backoff(base=0.1, cap=2.0)


def gpu_uuid(host_id: str, index: int) -> str:
    return f"GPU-{uuid.uuid5(_GPU_NAMESPACE, f'{host_id}/{index}')}"


def _delay(notebook: str, generation: int, what: str, low: float, high: float) -> float:
    return random.Random(f"{notebook}/{generation}/{what}").uniform(low, high)


@dataclass
class SimRun:
    """One run (generation) of a notebook on this host, as the agent sees it."""

    notebook: str
    generation: int
    gpus: list[str]
    state: NotebookState
    #: When the pretend container finishes what it is doing (loop clock); ``None``: nothing.
    due: float | None
    #: A replica acknowledged this run's RUNNING: its minutes count.
    billed: bool = False
    minutes: int = 0


class Outbox:
    """Reports not yet acknowledged: transitions in order, the newest minutes of each run."""

    def __init__(self, fleet: SimFleet) -> None:
        self.fleet = fleet
        self.transitions: list[wire.Transition] = []
        self.usage: dict[tuple[str, int], wire.UsageItem] = {}
        self.wake = asyncio.Event()

    def empty(self) -> bool:
        return not (self.transitions or self.usage)

    def add_transition(self, item: wire.Transition) -> None:
        self.transitions.append(item)
        self.wake.set()

    def add_usage(self, notebook: str, generation: int, minutes: int) -> None:
        key = (notebook, generation)
        if minutes <= max(self.fleet.reported.get(key, -1), self._queued(key)):
            return
        self.usage[key] = wire.UsageItem(notebook, generation, minutes, time.time())
        self.wake.set()

    def _queued(self, key: tuple[str, int]) -> int:
        item = self.usage.get(key)
        return -1 if item is None else item.billed_minutes

    async def flush(self, agent: SimAgent) -> None:
        """Send until empty: pending minutes always go before the next transitions, so the
        minutes of a run are in before the report that ends it. Raises
        :class:`SchedulerUnavailable` (everything unacknowledged stays queued)."""
        while True:
            if self.usage:
                sending = dict(self.usage)
                for key, item in sending.items():
                    self.fleet.sent[key] = max(self.fleet.sent.get(key, 0), item.billed_minutes)
                body = wire.UsageBatch(list(sending.values()))
                try:
                    await agent.send(agent.client.usage, body)
                    acknowledged = True
                except ApiError:  # a problem already; dropped, as the real agent does
                    acknowledged = False
                for key, item in sending.items():
                    if acknowledged:
                        reported = self.fleet.reported.get(key, 0)
                        self.fleet.reported[key] = max(reported, item.billed_minutes)
                    if self.usage.get(key) is item:
                        del self.usage[key]
                continue
            if not self.transitions:
                return
            batch = self.transitions[:BATCH]
            try:
                reply = await agent.send(agent.client.transitions, wire.TransitionBatch(batch))
            except ApiError:  # a problem already; dropped, as the real agent does
                del self.transitions[: len(batch)]
                continue
            del self.transitions[: len(batch)]
            if len(reply.items) != len(batch):
                agent.problem(f"{len(batch)} transitions answered with {len(reply.items)} results")
            for sent, result in zip(batch, reply.items, strict=False):
                agent.answered(sent, result)


class SimAgent:
    def __init__(
        self, fleet: SimFleet, host_id: str, secret: bytes, urls: Sequence[str], gpus: int
    ) -> None:
        self.fleet = fleet
        self.id = host_id
        self.client = SchedulerClient(list(urls), host_id, secret, session=fleet.session)
        self._url = self.client.scheduler_url
        self.gpus = [gpu_uuid(host_id, i) for i in range(gpus)]
        self.runs: dict[str, SimRun] = {}
        self.outbox = Outbox(fleet)
        self.interval_s = 10.0
        self.version: int | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------ HTTP

    async def send(
        self, request: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``request(*args)``, a method of :attr:`client`. An :class:`ApiError` (a 4xx) and a
        :class:`SchedulerUnavailable` although a replica replied (a 5xx, or a reply the client
        could not read; no proxy stands between these agents and the replicas) are problems,
        and raised on."""
        what = request.__name__
        replies: list[int] = []
        reset = _REPLIES.set(replies)
        try:
            return await request(*args, **kwargs)
        except ApiError as exc:
            self.problem(f"{what} answered {exc.code}: {exc}")
            raise
        except SchedulerUnavailable as exc:
            if replies:
                self.problem(f"{what} got HTTP {replies}: {exc}")
            raise
        finally:
            _REPLIES.reset(reset)
            if self.client.scheduler_url != self._url:
                self._url = self.client.scheduler_url
                self.fleet.switches[self.id] += 1

    def problem(self, text: str) -> None:
        self.fleet.problems.append(f"host={self.id} {text}")

    # ------------------------------------------------------------ lifecycle

    def registration(self) -> wire.AgentRegister:
        return wire.AgentRegister(
            cpus=64,
            memory_mb=512 * 1024,
            gpus=[
                wire.GpuInfo(uuid=u, index=i, model=GPU_MODEL, memory_total_mb=GPU_MEMORY_MB)
                for i, u in enumerate(self.gpus)
            ],
            # Nothing listens there: the scheduler calls agents only for logs and exec.
            agent_url="http://127.0.0.1:9",
            version="sim",
        )

    async def register(self) -> None:
        """Until a replica accepts."""
        backoff = _backoff()
        while True:
            try:
                reply = await self.send(self.client.register, self.registration())
            except (SchedulerUnavailable, ApiError) as exc:
                log.info("host=%s register failed (%s); again", self.id, exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            self.interval_s = reply.heartbeat_interval_s
            self.version = None
            return

    def start_loops(self) -> None:
        for name, body in (
            ("heartbeat", self._heartbeats),
            ("assignments", self._assignments),
            ("steps", self._steps),
            ("reports", self._reports),
            ("usage", self._usage),
        ):
            self._tasks.append(asyncio.create_task(body(), name=f"{self.id}-{name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _heartbeats(self) -> None:
        backoff = _backoff()
        delay = self.interval_s
        while True:
            await asyncio.sleep(delay)
            beat = wire.Heartbeat(
                gpus=self.registration().gpus,
                containers=sorted(r.notebook for r in self.runs.values() if r.state in HOLDING),
            )
            try:
                reply = await self.send(self.client.heartbeat, beat)
            except (SchedulerUnavailable, ApiError):
                delay = backoff.next_delay()
                continue
            backoff.reset()
            self.interval_s = delay = reply.heartbeat_interval_s
            if not reply.known:
                self.problem("was asked to register again (declared lost?)")
                await self.register()

    async def _assignments(self) -> None:
        backoff = _backoff()
        while True:
            try:
                result = await self.send(self.client.assignments, self.version, LONG_POLL_S)
            except (SchedulerUnavailable, ApiError):
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            self.version = result.version
            self.assigned(result.items)

    async def _steps(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.05)
            now = loop.time()
            for run in list(self.runs.values()):
                if run.due is not None and run.due <= now:
                    self._finish_step(run)

    async def _reports(self) -> None:
        backoff = _backoff()
        while True:
            try:
                await asyncio.wait_for(self.outbox.wake.wait(), 0.5)
            except TimeoutError:
                pass
            self.outbox.wake.clear()
            try:
                await self.outbox.flush(self)
            except SchedulerUnavailable:
                await asyncio.sleep(backoff.next_delay())
                self.outbox.wake.set()
                continue
            backoff.reset()

    async def _usage(self) -> None:
        while True:
            await asyncio.sleep(self.fleet.usage_interval_s)
            if self.fleet.usage_frozen:
                continue
            for run in self.runs.values():
                if run.billed and run.state == S.RUNNING:
                    run.minutes += 1
                    self.outbox.add_usage(run.notebook, run.generation, run.minutes)

    # ------------------------------------------------------------ pretend containers

    def assigned(self, items: list[wire.Assignment]) -> None:
        """Desired vs actual, as ``agent/reconcile.py`` decides it."""
        now = asyncio.get_running_loop().time()
        listed = {item.notebook for item in items}
        for item in items:
            run = self.runs.get(item.notebook)
            if run is not None and run.generation > item.generation:
                continue
            if run is None or run.generation < item.generation:
                self.runs[item.notebook] = self._new_run(item, now)
                continue
            if item.desired != "running" and run.state in (S.STARTING, S.RUNNING):
                # The scheduler's own STOPPING or DELETING: adopted, not reported.
                run.state = S.STOPPING if item.desired == "stopped" else S.DELETING
                run.due = now + _delay(run.notebook, run.generation, "stop", 0.2, 0.6)
        for notebook, run in list(self.runs.items()):
            if notebook not in listed:
                if run.state in HOLDING:
                    self.problem(
                        f"notebook={notebook} generation={run.generation} left the "
                        f"assignments while its container was {run.state}"
                    )
                del self.runs[notebook]

    def _new_run(self, item: wire.Assignment, now: float) -> SimRun:
        key = (item.notebook, item.generation)
        if item.desired == "running":
            if item.state != S.STARTING:
                self.problem(f"notebook={key[0]} generation={key[1]} assigned {item.state} first")
            held = {
                gpu: run.notebook
                for run in self.runs.values()
                if run.state in HOLDING and run.notebook != item.notebook
                for gpu in run.gpus
            }
            for gpu in item.gpus:
                if gpu in held:
                    self.problem(
                        f"GPU {gpu} assigned to notebook={key[0]} generation={key[1]} while "
                        f"notebook={held[gpu]} still holds it"
                    )
            due = now + _delay(item.notebook, item.generation, "start", 0.3, 1.2)
            return SimRun(item.notebook, item.generation, list(item.gpus), S.STARTING, due)
        # Stopped (or deleted) before this host started it: nothing to stop, report it.
        state = S.STOPPING if item.desired == "stopped" else S.DELETING
        due = now + _delay(item.notebook, item.generation, "stop", 0.2, 0.6)
        return SimRun(item.notebook, item.generation, list(item.gpus), state, due)

    def _finish_step(self, run: SimRun) -> None:
        run.due = None
        after = {S.STARTING: S.RUNNING, S.STOPPING: S.STOPPED, S.DELETING: S.DELETED}
        state = after.get(run.state)
        if state is None:
            return
        run.state = state
        reason = {S.RUNNING: "editor answers", S.STOPPED: "stopped", S.DELETED: "deleted"}
        self.outbox.add_transition(
            wire.Transition(run.notebook, run.generation, state, reason[state], time.time())
        )

    def answered(self, sent: wire.Transition, result: wire.TransitionResult) -> None:
        self.fleet.outcomes[f"{sent.state} {result.outcome}"] += 1
        if sent.state != S.RUNNING or result.outcome not in ("applied", "repeat"):
            return
        # The scheduler has the run RUNNING: bill it from here, even if a stop came since.
        run = self.runs.get(sent.notebook)
        if run is not None and run.generation == sent.generation and not run.billed:
            run.billed = True
            run.minutes = self.fleet.base_minutes
            self.outbox.add_usage(run.notebook, run.generation, run.minutes)


class SimFleet:
    def __init__(
        self,
        hosts: dict[str, tuple[bytes, Sequence[str]]],
        *,
        gpus_per_host: int = 8,
        usage_interval_s: float = 1.0,
        base_minutes: int = 10,
    ) -> None:
        self.usage_interval_s = usage_interval_s
        self.base_minutes = base_minutes
        self.usage_frozen = False
        self.reported: dict[tuple[str, int], int] = {}
        self.sent: dict[tuple[str, int], int] = {}
        self.problems: list[str] = []
        self.outcomes: Counter[str] = Counter()
        self.switches: Counter[str] = Counter()
        self.reports_in_flight: Counter[str] = Counter()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), trace_configs=[self._tracing()]
        )
        self.agents = {
            host: SimAgent(self, host, secret, urls, gpus_per_host)
            for host, (secret, urls) in hosts.items()
        }

    def _tracing(self) -> aiohttp.TraceConfig:
        """Sees each attempt of the agents' clients: counts the reports in flight by URL, and
        hands :meth:`SimAgent.send` the status of each reply."""

        async def started(_session, attempt, params: aiohttp.TraceRequestStartParams) -> None:
            attempt.report = params.url.path in REPORTS
            self.reports_in_flight[str(params.url.origin())] += attempt.report

        async def ended(_session, attempt, params: aiohttp.TraceRequestEndParams) -> None:
            self.reports_in_flight[str(params.url.origin())] -= attempt.report
            if (replies := _REPLIES.get()) is not None:
                replies.append(params.response.status)

        async def failed(_session, attempt, params: aiohttp.TraceRequestExceptionParams) -> None:
            self.reports_in_flight[str(params.url.origin())] -= attempt.report

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(started)
        trace.on_request_end.append(ended)
        trace.on_request_exception.append(failed)
        return trace

    async def start(self) -> None:
        await asyncio.gather(*(agent.register() for agent in self.agents.values()))
        for agent in self.agents.values():
            agent.start_loops()

    def freeze_usage(self) -> None:
        self.usage_frozen = True

    async def drained(self, timeout_s: float) -> None:
        """Wait until every report was acknowledged; fails naming what is left."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = {h: a.outbox for h, a in self.agents.items() if not a.outbox.empty()}
            if not left:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s:.0f}s waiting for the agents' outboxes to be "
                    "acknowledged; left: "
                    + "; ".join(
                        f"{h}: {len(o.transitions)} transitions, {len(o.usage)} usage figures"
                        for h, o in left.items()
                    )
                )
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        await asyncio.gather(*(agent.stop() for agent in self.agents.values()))
        await self.session.close()
