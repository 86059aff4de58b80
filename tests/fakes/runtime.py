"""FakeRuntime: a ContainerRuntime with behaviour, for reconcile tests.

Behaviours per image (``behaviours[image]``) or per notebook (``behaviours[notebook]``):

* ``"ok"`` (default): starts, the editor answers at once.
* ``"slow"``: the editor answers only after ``answer_after`` probes (default 3).
* ``"never"``: runs but the editor never answers.
* ``"exit1"`` / ``"exit0"``: exits right after starting with that code.
* ``"missing"``: the image does not exist (ImageUnavailable).
* ``"hang"``: create_and_start blocks until ``release(notebook)`` (a slow pull).

``probe(url)`` is the matching editor probe to inject into the Reconciler. ``exit(notebook,
code)`` makes a running container exit later. ``calls`` records every call in order.

``ports[notebook]`` publishes that notebook's editor on a given port (a test server standing in
for the editor) instead of a made-up one. ``follow_logs`` yields the log text, then what
``append_log`` adds, until ``exit`` (or ``end_logs``). ``exec`` answers ``exec_output`` (default:
the command echoed, exit 0); a command ``["sleep", N]`` sleeps N seconds, so a timeout can hit.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

from agent.runtime import (
    ContainerExists,
    ContainerInfo,
    ContainerNotRunning,
    ContainerSpec,
    ContainerUsage,
    ExecOutput,
    ImageUnavailable,
    NoSuchContainer,
)
from common import wire


class FakeRuntime:
    def __init__(self) -> None:
        self.containers: dict[str, ContainerInfo] = {}
        self.specs: dict[str, ContainerSpec] = {}
        #: Every URL the readiness probe was asked about, in order.
        self.probed: list[str] = []
        self.behaviours: dict[str, str] = {}
        self.answer_after = 3
        self.calls: list[tuple[str, str]] = []
        self.logs_text: dict[str, str] = {}
        #: What ``usage`` answers for a running container (else 1.5 CPU-seconds, 64 MiB).
        self.usage_figures: dict[str, ContainerUsage] = {}
        self._probes: dict[str, int] = {}
        self._ports = itertools.count(40000)
        self._gates: dict[str, asyncio.Event] = {}
        self.closed = False
        self.ports: dict[str, int] = {}
        self._log_feeds: dict[str, list[asyncio.Queue[str | None]]] = {}
        self.exec_calls: list[tuple[str, list[str], str]] = []
        self.exec_output: dict[str, ExecOutput] = {}
        self.pruned_networks: list[set[str]] = []
        #: What ``framework_images`` answers: the host's catalog images.
        self.images: list[wire.HostImage] = []

    def behaviour(self, spec_or_notebook: ContainerSpec | str) -> str:
        if isinstance(spec_or_notebook, str):
            spec = self.specs.get(spec_or_notebook)
            notebook = spec_or_notebook
        else:
            spec, notebook = spec_or_notebook, spec_or_notebook.notebook
        if notebook in self.behaviours:
            return self.behaviours[notebook]
        if spec is not None and spec.image in self.behaviours:
            return self.behaviours[spec.image]
        return "ok"

    def release(self, notebook: str) -> None:
        self._gates.setdefault(notebook, asyncio.Event()).set()

    def add_existing(self, info: ContainerInfo) -> None:
        """A container that was there before the agent started (adoption tests)."""
        self.containers[info.notebook] = info

    def exit(self, notebook: str, code: int) -> None:
        info = self.containers[notebook]
        info.status = "exited"
        info.exit_code = code
        self.end_logs(notebook)

    def append_log(self, notebook: str, text: str) -> None:
        self.logs_text[notebook] = self.logs_text.get(notebook, "") + text
        for feed in self._log_feeds.get(notebook, []):
            feed.put_nowait(text)

    def end_logs(self, notebook: str) -> None:
        for feed in self._log_feeds.pop(notebook, []):
            feed.put_nowait(None)

    async def create_and_start(self, spec: ContainerSpec) -> ContainerInfo:
        self.calls.append(("create", spec.notebook))
        if spec.notebook in self.containers:
            raise ContainerExists(spec.notebook)
        behaviour = self.behaviour(spec)
        if behaviour == "missing":
            raise ImageUnavailable(f"image {spec.image} is not available: not found")
        if behaviour == "hang":
            await self._gates.setdefault(spec.notebook, asyncio.Event()).wait()
        self.specs[spec.notebook] = spec
        info = ContainerInfo(
            notebook=spec.notebook,
            generation=spec.generation,
            project=spec.project,
            gpus=list(spec.gpus),
            status="running",
            host_port=self.ports.get(spec.notebook) or next(self._ports),
            container_id=f"c-{spec.notebook}-{spec.generation}",
        )
        if behaviour in ("exit0", "exit1"):
            info.status = "exited"
            info.exit_code = int(behaviour[-1])
        self.containers[spec.notebook] = info
        return _copy(info)

    async def probe(self, url: str) -> bool:
        self.probed.append(url)
        for notebook, info in self.containers.items():
            if info.host_port is not None and f":{info.host_port}/" in url + "/":
                if not info.running:
                    return False
                behaviour = self.behaviour(notebook)
                if behaviour == "never":
                    return False
                if behaviour == "slow":
                    self._probes[notebook] = self._probes.get(notebook, 0) + 1
                    return self._probes[notebook] > self.answer_after
                return True
        return False

    async def inspect(self, notebook: str) -> ContainerInfo | None:
        info = self.containers.get(notebook)
        return None if info is None else _copy(info)

    async def list_managed(self) -> list[ContainerInfo]:
        return [_copy(info) for info in self.containers.values()]

    async def stop(self, notebook: str, timeout_s: float = 10.0) -> None:
        self.calls.append(("stop", notebook))
        info = self.containers.get(notebook)
        if info is not None and info.running:
            info.status = "exited"
            info.exit_code = 137

    async def remove(self, notebook: str) -> None:
        self.calls.append(("remove", notebook))
        self.containers.pop(notebook, None)

    async def logs(self, notebook: str, tail: int = 200) -> str:
        if notebook not in self.containers:
            raise NoSuchContainer(notebook)
        lines = self.logs_text.get(notebook, f"log of {notebook}\n").splitlines(keepends=True)
        return "".join(lines[-tail:])

    async def usage(self, notebook: str) -> ContainerUsage | None:
        info = self.containers.get(notebook)
        if info is None or not info.running:
            return None
        return self.usage_figures.get(notebook, ContainerUsage(1.5, 64 << 20))

    async def follow_logs(self, notebook: str, tail: int = 200) -> AsyncIterator[str]:
        if notebook not in self.containers:
            raise NoSuchContainer(notebook)
        feed: asyncio.Queue[str | None] = asyncio.Queue()
        self._log_feeds.setdefault(notebook, []).append(feed)
        try:
            yield await self.logs(notebook, tail)
            if not self.containers[notebook].running:
                return
            while (text := await feed.get()) is not None:
                yield text
        finally:
            feeds = self._log_feeds.get(notebook, [])
            if feed in feeds:
                feeds.remove(feed)

    async def exec(
        self,
        notebook: str,
        command: list[str],
        *,
        user: str = "",
        timeout_s: float = 60.0,
        max_output: int = 1 << 20,
    ) -> ExecOutput:
        self.exec_calls.append((notebook, list(command), user))
        info = self.containers.get(notebook)
        if info is None:
            raise NoSuchContainer(notebook)
        if not info.running:
            raise ContainerNotRunning(notebook)
        if command[0] == "sleep":
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.sleep(float(command[1]))
            except TimeoutError:
                return ExecOutput(124, b"", timed_out=True)
        found = self.exec_output.get(notebook)
        if found is not None:
            return found
        output = (" ".join(command) + "\n").encode()
        return ExecOutput(0, output[:max_output], truncated=len(output) > max_output)

    async def prune_networks(self, skip: set[str]) -> list[str]:
        self.pruned_networks.append(set(skip))
        return []

    async def framework_images(self) -> list[wire.HostImage]:
        return list(self.images)

    async def close(self) -> None:
        self.closed = True


def _copy(info: ContainerInfo) -> ContainerInfo:
    return ContainerInfo(**{**info.__dict__, "gpus": list(info.gpus)})
