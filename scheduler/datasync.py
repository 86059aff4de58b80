"""Datasync on the scheduler's side (design.md, "Datasync"): which of a RUNNING notebook's
volumes a ``DatasyncRequest`` means and which host runs it; the transfer itself is the agent's
(:mod:`agent.datasync`), reached with :meth:`scheduler.agent_client.AgentClient.datasync`.

* 404 for a notebook of another project, 403 for one a scoped token does not reach (as every
  notebook call); 409 naming the state (``detail.state``) unless RUNNING.
* ``volume`` picks the notebook's volumes whose datastore alias, ``container@alias`` or mount
  path it is; one it matches none of is 400 naming ``$.volume`` and listing the volumes.
* ``push`` applies to ``rw`` and ``rwd`` volumes: ``ro`` ones picked along with others are
  left out (named in the result, :attr:`DatasyncPlan.left_out`), picking only ``ro`` ones, or
  a notebook with none to push, is 400 naming ``$.volume``. ``pull`` applies to every volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common import wire
from common.errors import invalid
from common.states import NotebookState
from common.volume_spec import format_volume
from scheduler.datastores import normalize_mount, stored_volumes
from scheduler.db import Database
from scheduler.notebook_views import load, require_state

FIELD = "$.volume"


@dataclass
class DatasyncPlan:
    """Where the datasync runs and what the agent is asked."""

    host_id: str
    agent_url: str
    start: wire.DatasyncStart
    #: ``ro`` volumes picked for a push: not sent, named in the result.
    left_out: list[wire.DatasyncVolume] = field(default_factory=list)


class DatasyncPlanner:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def plan(
        self,
        project: str,
        notebook_id: str,
        ask: wire.DatasyncRequest,
        selector: dict[str, str] | None = None,
    ) -> DatasyncPlan:
        async with self.db.read() as tx:
            row = await load(tx, project, notebook_id, selector)
            require_state(
                row,
                frozenset({NotebookState.RUNNING}),
                "datasync runs while it is RUNNING (a stop pushes its volumes itself)",
            )
            host = await tx.one("SELECT agent_url FROM hosts WHERE id = ?", (row["host_id"],))
            assert host is not None  # a RUNNING notebook holds its host
        chosen, left_out = pick_volumes(notebook_id, stored_volumes(row), ask)
        return DatasyncPlan(
            host_id=row["host_id"],
            agent_url=host["agent_url"],
            start=wire.DatasyncStart(
                generation=row["generation"], direction=ask.direction, volumes=chosen
            ),
            left_out=left_out,
        )


def _matches(volume: wire.Volume, name: str) -> bool:
    if name.startswith("/"):
        return normalize_mount(volume.mount_path) == normalize_mount(name)
    return name in (volume.alias, f"{volume.container}@{volume.alias}")


def pick_volumes(
    notebook_id: str, volumes: list[wire.Volume], ask: wire.DatasyncRequest
) -> tuple[list[wire.Volume], list[wire.DatasyncVolume]]:
    """``(volumes to sync, ro volumes left out of a push)``; 400 naming ``$.volume`` when
    there is nothing to sync (see the module docstring)."""
    listed = ", ".join(format_volume(v) for v in volumes) or "none"
    if not volumes:
        raise invalid(f"notebook {notebook_id} has no volumes - at `{FIELD}`", field=FIELD)
    picked = volumes
    if ask.volume is not None:
        picked = [v for v in volumes if _matches(v, ask.volume)]
        if not picked:
            raise invalid(
                f"notebook {notebook_id} has no volume with datastore alias or mount path "
                f"{ask.volume!r} (its volumes: {listed}) - at `{FIELD}`",
                field=FIELD,
            )
    if ask.direction == "pull":
        return picked, []
    pushed = [v for v in picked if v.permission != "ro"]
    if not pushed:
        what = "its volumes" if ask.volume is None else f"volumes matching {ask.volume!r}"
        raise invalid(
            f"notebook {notebook_id} has no rw or rwd volume to push ({what}: "
            f"{', '.join(format_volume(v) for v in picked)}); ro volumes are never pushed, "
            f"`--direction pull` brings new objects into them - at `{FIELD}`",
            field=FIELD,
        )
    left_out = [
        wire.DatasyncVolume(
            volume=format_volume(v), skipped=1, details=["read-only (ro): never pushed"]
        )
        for v in picked
        if v.permission == "ro"
    ]
    return pushed, left_out
