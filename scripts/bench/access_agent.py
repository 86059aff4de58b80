"""The agent process of scripts/bench-access: nbfleet's own agent, with what this machine lacks
stood in for.

Everything on the path the bench measures is the real thing: :class:`agent.app.Agent` with its
HTTP server and middleware, the editor proxy (:class:`agent.proxy.EditorProxy`), token checks
against the scheduler (:class:`agent.proxy_access.Authorizer` over the signed
:class:`agent.client.SchedulerClient`), the activity meter, and around it registration,
heartbeats, the assignments long-poll, the reconciler and its reports, so the scheduler learns
that the notebook is RUNNING as it does in production. Three adapters are injected through
:func:`agent.app.build_agent` instead of Docker, NVML and S3, none of which is on that path:

* :class:`ProcessRuntime`: a notebook's "container" is its catalog command run as a local
  process, its editor port published as is (the bench's catalog names a free port);
* the project's behavioural fakes (tests/fakes): :class:`FakeInventory`, a host with CPUs only
  (the bench runs a CPU notebook), and :class:`FakeObjectStore`, an object store in memory; a
  notebook's first start restores an empty workspace from it, and nothing else reaches it
  during a run.

    python -m bench.access_agent --config agent.toml [--log-level INFO]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from agent.app import build_agent
from agent.runtime import (
    ContainerExists,
    ContainerInfo,
    ContainerNotRunning,
    ContainerSpec,
    ExecOutput,
    NoSuchContainer,
)
from common.auth import read_secret
from common.config import AgentConfig, load
from tests.fakes.inventory import FakeInventory
from tests.fakes.objectstore import FakeObjectStore

log = logging.getLogger("bench.access_agent")


class ProcessRuntime:
    """:class:`agent.runtime.ContainerRuntime` over local processes: ``create_and_start`` runs
    ``spec.command`` with ``spec.env`` added to this process's environment, output to
    ``{log_dir}/{notebook}.log``; the editor port is the host port. Stop and remove are
    idempotent; ``close`` stops every process it started (unlike Docker's containers, they
    would not outlive the bench). No limits, users, mounts or exec: nothing measured needs
    them."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: dict[str, tuple[subprocess.Popen[bytes], ContainerInfo]] = {}

    def _info(self, notebook: str) -> ContainerInfo | None:
        found = self._procs.get(notebook)
        if found is None:
            return None
        proc, info = found
        code = proc.poll()
        if code is not None:
            info.status, info.exit_code = "exited", code
        return ContainerInfo(**vars(info))

    async def create_and_start(self, spec: ContainerSpec) -> ContainerInfo:
        if spec.notebook in self._procs:
            raise ContainerExists(spec.notebook)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{spec.notebook}.log", "ab") as out:
            proc = subprocess.Popen(
                spec.command,
                env={**os.environ, **spec.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        info = ContainerInfo(
            notebook=spec.notebook,
            generation=spec.generation,
            project=spec.project,
            gpus=list(spec.gpus),
            host_port=spec.editor_port,
            container_id=f"pid-{proc.pid}",
        )
        self._procs[spec.notebook] = (proc, info)
        log.info("notebook=%s editor started as pid %d", spec.notebook, proc.pid)
        return ContainerInfo(**vars(info))

    async def inspect(self, notebook: str) -> ContainerInfo | None:
        return self._info(notebook)

    async def list_managed(self) -> list[ContainerInfo]:
        return [info for n in list(self._procs) if (info := self._info(n)) is not None]

    async def stop(self, notebook: str, timeout_s: float = 10.0) -> None:
        found = self._procs.get(notebook)
        if found is None or found[0].poll() is not None:
            return
        proc = found[0]
        proc.terminate()
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    async def remove(self, notebook: str) -> None:
        await self.stop(notebook)
        self._procs.pop(notebook, None)

    async def logs(self, notebook: str, tail: int = 200) -> str:
        if notebook not in self._procs:
            raise NoSuchContainer(notebook)
        try:
            text = (self.log_dir / f"{notebook}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "".join(text.splitlines(keepends=True)[-tail:])

    async def follow_logs(self, notebook: str, tail: int = 200) -> AsyncIterator[str]:
        yield await self.logs(notebook, tail)

    async def exec(
        self,
        notebook: str,
        command: list[str],
        *,
        user: str = "",
        timeout_s: float = 60.0,
        max_output: int = 1 << 20,
    ) -> ExecOutput:
        info = self._info(notebook)
        if info is None:
            raise NoSuchContainer(notebook)
        if not info.running:
            raise ContainerNotRunning(notebook)
        return ExecOutput(126, b"exec is not supported by the bench's process runtime\n")

    async def prune_networks(self, skip: set[str]) -> list[str]:
        return []

    async def close(self) -> None:
        for notebook in list(self._procs):
            await self.stop(notebook, timeout_s=5.0)


async def _run(config: AgentConfig) -> None:
    agent = build_agent(
        config,
        host_id=config.host_id,
        secret=read_secret(config.secret_file),
        runtime=ProcessRuntime(Path(config.state_dir) / "editors"),
        # The project's behavioural fakes: a host without GPUs, S3 in memory (neither is on
        # the measured path).
        inventory=FakeInventory(note="bench-access: a CPU-only stand-in host"),
        store=FakeObjectStore(),
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await agent.start()
    try:
        await stopping.wait()
    finally:
        await agent.stop()  # its runtime's close stops the editors it started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # As agent.main does: the agent runs on asyncio's default event loop.
    asyncio.run(_run(load(AgentConfig, args.config, env_prefix="NBFLEET_AGENT_")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
