"""Retiring what no assignment wants: managed containers and the networks left behind.

A managed container no assignment mentions (the scheduler gave up on it, e.g. it declared this
host lost and moved the notebook to ERROR or elsewhere) is stopped, its workspace pushed, and
only then removed with its host dir; while the push fails the stopped container and the host
dir stay, and the push is retried with backoff (across agent restarts too, since the container
is the reminder). Nothing is reported for it but the snapshot: the scheduler has settled that
notebook. Nothing is retired before the first assignments arrive (the dispatcher,
:mod:`agent.reconcile`, waits for them).

An orphan whose notebook another host has saved since this host last synced is not pushed: that
would make this host's older copy the one the next start restores. Its container is removed and
its host dir kept for an operator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.client import Backoff
from agent.kept_logs import KeptLogs
from agent.notebook_sync import NotebookSync
from agent.runtime import ContainerInfo, ContainerRuntime
from agent.workspace.host import HostWorkspaces

log = logging.getLogger(__name__)

#: Retries of an orphan's failed push: jittered, from seconds up to five minutes apart.
ORPHAN_RETRY_BASE_S = 5.0
ORPHAN_RETRY_CAP_S = 300.0
#: How often networks left behind by a crash are looked for.
NETWORK_PRUNE_INTERVAL_S = 300.0


class Orphans:
    def __init__(
        self,
        runtime: ContainerRuntime,
        workspaces: HostWorkspaces,
        sync: NotebookSync,
        kept_logs: KeptLogs,
        clock: Callable[[], float],
    ) -> None:
        self.runtime = runtime
        self.workspaces = workspaces
        self.sync = sync
        self.kept_logs = kept_logs
        self.clock = clock
        #: Orphans whose push failed: their backoff and when to try again.
        self._retry: dict[str, tuple[Backoff, float]] = {}
        self._networks_pruned_at: float | None = None

    def forget_retries(self, settled: Callable[[str], bool]) -> None:
        """Drop the backoff of every orphan that is ``settled`` (its container gone, or
        assigned again)."""
        for notebook in list(self._retry):
            if settled(notebook):
                del self._retry[notebook]

    async def prune_networks(self, keep: set[str]) -> None:
        """Every ``NETWORK_PRUNE_INTERVAL_S``, remove the managed networks of notebooks not in
        ``keep`` (a crash between a container's removal and its network's)."""
        now = self.clock()
        last = self._networks_pruned_at
        if last is not None and now - last < NETWORK_PRUNE_INTERVAL_S:
            return
        self._networks_pruned_at = now
        try:
            await self.runtime.prune_networks(keep)
        except Exception as exc:
            log.warning("reconcile: pruning orphan networks failed, retried later: %s", exc)

    async def retire(self, notebook: str, info: ContainerInfo | None) -> None:
        """A managed container no assignment wants: stop it, push its workspace, then remove
        the container and the host dir. A failed push keeps both (the stopped container is
        what brings us back here) and is retried after a jittered backoff."""
        now = self.clock()
        retry = self._retry.get(notebook)
        if retry is not None and now < retry[1]:
            return
        if retry is None:
            log.warning(
                "notebook=%s container is not assigned to this host; stopping it, saving its "
                "workspace, then removing it",
                notebook,
            )
        await self.runtime.stop(notebook)
        await self.workspaces.remove_scratch(notebook)
        try:
            newer = await self.workspaces.written_elsewhere(notebook)
            if newer is not None:
                # Pushing now would make this host's older copy the one the next start
                # restores, over the work done elsewhere. Keep it on disk for an operator.
                log.warning(
                    "notebook=%s another host saved snapshot %s since this host last synced; "
                    "not pushing this host's copy over it. It stays in %s",
                    notebook,
                    newer,
                    self.workspaces.workspace_dir(notebook),
                )
                self._retry.pop(notebook, None)
                await self.kept_logs.keep(self.runtime, notebook)
                await self.runtime.remove(notebook)
                return
            result = await self.workspaces.push(notebook)
        except Exception as exc:
            backoff = (
                retry[0] if retry is not None else Backoff(ORPHAN_RETRY_BASE_S, ORPHAN_RETRY_CAP_S)
            )
            delay = backoff.next_delay()
            self._retry[notebook] = (backoff, now + delay)
            log.warning(
                "notebook=%s orphan workspace push failed, keeping the stopped container and "
                "the host dir; next try in %.0fs: %s",
                notebook,
                delay,
                exc,
            )
            return
        self._retry.pop(notebook, None)
        if info is not None and info.generation >= 1:
            # Recorded only if the scheduler still counts this host as the notebook's last.
            self.sync.report_snapshot(notebook, info.generation, result)
        await self.kept_logs.keep(self.runtime, notebook)
        await self.runtime.remove(notebook)
        await self.workspaces.remove_workspace_dir(notebook)
        log.info("notebook=%s orphan container removed, workspace saved", notebook)
