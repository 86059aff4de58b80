"""The idle signal's measurements: what each running notebook is doing besides proxied traffic
and SSH, which :class:`agent.proxy_access.ActivityMeter` records as they happen.

:class:`ActivityProbe` looks, every ``activity_interval_s``, at each notebook RUNNING here
whose container runs, all of them at once, each within :data:`PROBE_TIMEOUT_S`, and records in
the meter when each last showed activity and what showed it (``NotebookActivity.signal``):

* ``activity_api = "jupyter"``: Jupyter Server's ``api/kernels``, ``api/terminals`` and
  ``api/status``, with the notebook's token. A kernel neither ``idle`` nor ``dead`` is
  activity now (``kernel busy``); each kernel's and terminal's ``last_activity`` is activity
  then (``kernel``, ``terminal``); so is the server's own (``Jupyter API``: API calls from
  inside the container too); each read on its own, so a server with terminals turned off still
  tells its kernels. The list calls carry ``no_track_activity=1`` and ``/api/status`` is not
  counted either, so our polling never keeps a notebook alive.
* ``activity_api = "code-server"``: its ``healthz``. ``alive`` is activity now, else its
  ``lastHeartbeat`` (``code-server``). code-server beats while any TCP connection to it is
  open and ``healthz`` does not beat, so the probe closes its connections after each request
  (``force_close``): an idle kept-alive connection of ours would keep it alive for ever.
* GPUs: any of the notebook's GPUs at ``gpu_busy_pct`` or more (NVML utilization) is activity
  now (``GPU 87%``, the busiest).
* CPU, for notebooks without GPUs: the container's CPU time since the previous tick, as a share
  of the CPUs it was given, at ``cpu_busy_pct`` or more is activity now (``CPU 40%``). The first
  look only takes a sample; a counter that went back (a restarted container) starts again.

An editor that does not answer, answers late or answers something else counts as nothing
(logged at debug: an editor still starting or one the user broke is not news) and never stops
the others. A time later than now is taken as now: the meter never holds one to come, which
would outlast it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from agent.gpus import GpuInventory
from agent.proxy_access import ActivityMeter
from agent.proxy_paths import UPSTREAM_HOST, Editor, editor_path, upstream_authority
from agent.runtime import ContainerRuntime
from common.wire import Assignment

log = logging.getLogger(__name__)

#: How long one notebook's editor has to answer all of a probe's requests.
PROBE_TIMEOUT_S = 5.0
#: Kernel states that are not work.
RESTING_KERNEL = frozenset({"idle", "dead"})

#: (when, what showed it)
Seen = tuple[float, str]


class ActivityProbe:
    """Measures the notebooks running here and records what it finds in ``meter``.

    ``assignments()`` gives the notebooks assigned here; ``editor(notebook)`` what may be known
    of one (:meth:`agent.notebook_view.NotebookView.editor`: only a ready one is looked at);
    ``upstream_host`` is where editor ports are published. ``clock`` is the agent's wall
    clock, the one the meter and the heartbeats use. :meth:`close` closes its HTTP client.
    """

    def __init__(
        self,
        assignments: Callable[[], Mapping[str, Assignment]],
        editor: Callable[[str], Editor | None],
        runtime: ContainerRuntime,
        inventory: GpuInventory,
        meter: ActivityMeter,
        *,
        upstream_host: str = UPSTREAM_HOST,
        clock: Callable[[], float] = time.time,
        timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self._assignments = assignments
        self._editor = editor
        self._runtime = runtime
        self._inventory = inventory
        self._meter = meter
        self._upstream_host = upstream_host
        self._clock = clock
        self._timeout_s = timeout_s
        #: Per CPU notebook: the previous tick's (time, cumulative CPU seconds).
        self._cpu_samples: dict[str, tuple[float, float]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def tick(self) -> None:
        running = [
            (assignment, editor)
            for notebook, assignment in sorted(self._assignments().items())
            if (editor := self._editor(notebook)) is not None and editor.ready
        ]
        utilization: dict[str, int] = {}
        if any(assignment.gpus for assignment, _ in running):
            snapshot = await self._inventory.snapshot()
            utilization = {gpu.uuid: gpu.utilization_pct for gpu in snapshot.gpus}
        cpu_measured = {a.notebook for a, _ in running if not a.gpus}
        for notebook in set(self._cpu_samples) - cpu_measured:
            del self._cpu_samples[notebook]
        await asyncio.gather(*(self._measure(a, e, utilization) for a, e in running))

    async def _measure(
        self, assignment: Assignment, editor: Editor, utilization: Mapping[str, int]
    ) -> None:
        notebook = assignment.notebook
        editor_seen, cpu_seen = await asyncio.gather(
            self._bounded("editor activity", notebook, self._editor_api(assignment, editor)),
            self._bounded("CPU use", notebook, self._cpu(assignment)),
        )
        seen = editor_seen + self._gpus(assignment, utilization) + cpu_seen
        if seen:
            now = self._clock()
            # The first of the latest: the editor's own account before the figures.
            at, signal = max(seen, key=lambda s: min(s[0], now))
            self._meter.record(notebook, at=min(at, now), signal=signal)

    async def _bounded(self, what: str, notebook: str, look: Awaitable[list[Seen]]) -> list[Seen]:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await look
        except Exception as exc:  # no activity, and no reason to stop looking at the rest
            log.debug("notebook=%s %s not read: %r", notebook, what, exc)
            return []

    # ------------------------------------------------------------ editors

    async def _editor_api(self, assignment: Assignment, editor: Editor) -> list[Seen]:
        if assignment.activity_api == "jupyter":
            return await self._jupyter(editor)
        if assignment.activity_api == "code-server":
            return await self._code_server(editor)
        return []

    async def _jupyter(self, editor: Editor) -> list[Seen]:
        headers = {"Authorization": f"token {editor.access_token}"} if editor.access_token else {}
        # Each on its own: a server with terminals turned off answers 404 to api/terminals.
        kernels, terminals, status = await asyncio.gather(
            self._get(editor, "api/kernels?no_track_activity=1", headers),
            self._get(editor, "api/terminals?no_track_activity=1", headers),
            self._get(editor, "api/status", headers),
            return_exceptions=True,
        )
        for answer in (kernels, terminals, status):
            if isinstance(answer, Exception):
                log.debug("notebook=%s Jupyter API not read: %r", editor.notebook, answer)
            elif isinstance(answer, BaseException):
                raise answer
        seen: list[Seen] = []
        for kernel in _objects(kernels):
            if kernel.get("execution_state") not in RESTING_KERNEL:
                seen.append((self._clock(), "kernel busy"))
            seen += _stamped(kernel, "kernel")
        for terminal in _objects(terminals):
            seen += _stamped(terminal, "terminal")
        if isinstance(status, dict):
            seen += _stamped(status, "Jupyter API")
        return seen

    async def _code_server(self, editor: Editor) -> list[Seen]:
        health = await self._get(editor, "healthz", {})
        if not isinstance(health, dict):
            return []
        if health.get("status") == "alive":
            return [(self._clock(), "code-server")]
        beat = health.get("lastHeartbeat")
        if isinstance(beat, int | float) and not isinstance(beat, bool) and beat > 0:
            return [(beat / 1000, "code-server")]
        return []

    async def _get(self, editor: Editor, path: str, headers: dict[str, str]) -> Any:
        """The JSON ``path`` (relative to the editor's base URL) answers."""
        authority = upstream_authority(self._upstream_host, editor.port or 0)
        url = f"http://{authority}{editor_path(editor.base_url, '/' + path)}"
        async with self._http().get(url, headers=headers, allow_redirects=False) as response:
            response.raise_for_status()
            return await response.json(content_type=None)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    # ------------------------------------------------------------ figures

    def _gpus(self, assignment: Assignment, utilization: Mapping[str, int]) -> list[Seen]:
        busiest = max((utilization.get(gpu, 0) for gpu in assignment.gpus), default=0)
        if assignment.gpus and busiest >= assignment.gpu_busy_pct:
            return [(self._clock(), f"GPU {busiest}%")]
        return []

    async def _cpu(self, assignment: Assignment) -> list[Seen]:
        notebook = assignment.notebook
        if assignment.gpus:
            return []  # a GPU notebook's CPUs feed its GPUs: the GPUs tell
        usage = await self._runtime.usage(notebook)
        now = self._clock()
        previous = self._cpu_samples.pop(notebook, None)
        if usage is None:
            return []
        self._cpu_samples[notebook] = (now, usage.cpu_seconds)
        if previous is None:
            return []
        then, cpu_then = previous
        if now <= then or usage.cpu_seconds < cpu_then:
            return []  # a restarted container, or a clock set back: this is a first sample
        pct = 100 * (usage.cpu_seconds - cpu_then) / (now - then) / max(assignment.cpu, 1)
        if pct >= assignment.cpu_busy_pct:
            return [(now, f"CPU {round(pct)}%")]
        return []


def _objects(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _stamped(item: dict[str, Any], signal: str) -> list[Seen]:
    """``item``'s ``last_activity`` (ISO 8601, UTC) as activity then; nothing when it has none."""
    value = item.get("last_activity")
    if not isinstance(value, str):
        return []
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return []
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)  # Jupyter's times are UTC, whether they say so or not
    return [(at.timestamp(), signal)]
