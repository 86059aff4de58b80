"""Datastores (S3 endpoints and credentials registered per project under an alias) and the
checks and resolution of the data volumes notebooks mount from them.

Credentials are stored here and leave the scheduler only inside ``Assignment.volumes``
(:func:`resolve_volumes`, agent protocol); :class:`wire.Datastore` has no field for them, and
nothing here logs them. An alias a non-deleted notebook mounts cannot be deleted (409 naming
the notebooks), so resolving a stored volume always finds its datastore.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import msgspec

from common import wire
from common.errors import conflict, invalid, not_found
from common.states import NotebookState
from scheduler.db import Database, IntegrityError, Row, Tx

log = logging.getLogger(__name__)

#: More volumes than this is a mistake, not a notebook.
MAX_VOLUMES = 16

#: Mount paths that would hide or replace what the container needs: ``/workspace`` and
#: ``/data`` themselves (the notebook's own mounts), ``/tmp`` (a tmpfs), and the system
#: directories and everything below them.
RESERVED_EXACT = frozenset({"/", "/workspace", "/data", "/tmp"})
SYSTEM_DIRS = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var",
)

_volumes_decoder = msgspec.json.Decoder(list[wire.Volume])


def normalize_mount(path: str) -> str:
    return path.rstrip("/") or "/"


def _reserved(path: str) -> str | None:
    if path in RESERVED_EXACT:
        return f"{path} is reserved"
    for system in SYSTEM_DIRS:
        if path == system or path.startswith(system + "/"):
            return f"{system} is a system directory"
    return None


def check_mount_paths(volumes: Sequence[wire.Volume]) -> None:
    """400 for too many volumes, a reserved or system mount path, or two volumes on the same
    (or a nested) mount path; the error names the field (``$.volumes[i].mount_path``)."""
    if len(volumes) > MAX_VOLUMES:
        raise invalid(
            f"invalid request: at most {MAX_VOLUMES} volumes per notebook - at `$.volumes`",
            field="$.volumes",
        )
    seen: list[str] = []
    for i, volume in enumerate(volumes):
        field = f"$.volumes[{i}].mount_path"
        path = normalize_mount(volume.mount_path)
        why = _reserved(path)
        if why is not None:
            raise invalid(
                f"invalid request: volume mount path {volume.mount_path} is not allowed "
                f"({why}) - at `{field}`",
                field=field,
            )
        for j, other in enumerate(seen):
            if path == other:
                raise invalid(
                    f"invalid request: volumes {j} and {i} both mount at {path} - at `{field}`",
                    field=field,
                )
            if path.startswith(other + "/") or other.startswith(path + "/"):
                raise invalid(
                    f"invalid request: volume {i} at {path} nests with volume {j} at {other} "
                    f"- at `{field}`",
                    field=field,
                )
        seen.append(path)


async def check_volumes(tx: Tx, project: str, volumes: Sequence[wire.Volume]) -> None:
    """Every check of ``NotebookCreate.volumes``: mount paths, then that each alias is a
    datastore of ``project`` (400 naming ``$.volumes[i].alias``)."""
    check_mount_paths(volumes)
    if not volumes:
        return
    known = {r["alias"] for r in await tx.all(_ALIASES, (project,))}
    for i, volume in enumerate(volumes):
        if volume.alias not in known:
            field = f"$.volumes[{i}].alias"
            raise invalid(
                f"invalid request: datastore alias {volume.alias!r} is not registered in "
                f"project {project} (known: {', '.join(sorted(known)) or 'none'}; add it with "
                f"`nbfleet datastore add`) - at `{field}`",
                field=field,
            )


_ALIASES = "SELECT alias FROM datastores WHERE project = ?"


def encode_volumes(volumes: Sequence[wire.Volume]) -> str:
    """The (checked) volumes as the notebook's row stores them."""
    return wire.encode(list(volumes)).decode()


def stored_volumes(row: Row) -> list[wire.Volume]:
    """The volumes of a notebook row (none for rows from before volumes existed)."""
    raw = row["volumes"] if "volumes" in row.keys() else None
    return _volumes_decoder.decode(raw) if raw else []


async def resolve_volumes(tx: Tx, row: Row) -> list[wire.VolumeAssignment]:
    """The notebook's volumes with their datastore's endpoint and credentials, for the agent
    that runs it. Only the agent protocol may send the result anywhere."""
    volumes = stored_volumes(row)
    if not volumes:
        return []
    stores = {
        r["alias"]: r
        for r in await tx.all("SELECT * FROM datastores WHERE project = ?", (row["project"],))
    }
    resolved = []
    for volume in volumes:
        store = stores.get(volume.alias)
        if store is None:  # cannot happen while deletes of used aliases are refused
            log.error(
                "notebook=%s volume alias %s has no datastore; not assigning it",
                row["id"],
                volume.alias,
            )
            continue
        resolved.append(
            wire.VolumeAssignment(
                volume=volume,
                endpoint=store["endpoint"],
                region=store["region"],
                access_key=store["access_key"],
                secret_key=store["secret_key"],
            )
        )
    return resolved


def _view(row: Row) -> wire.Datastore:
    return wire.Datastore(
        alias=row["alias"],
        endpoint=row["endpoint"],
        region=row["region"],
        created_at=row["created_at"],
    )


class DatastoreService:
    """``/v1/datastores``: add, list and delete a project's datastore aliases."""

    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self.db = db
        self.clock = clock

    async def create(self, project: str, request: wire.DatastoreCreate) -> wire.Datastore:
        now = self.clock()
        try:
            async with self.db.transaction() as tx:
                await tx.run(
                    "INSERT INTO datastores (project, alias, endpoint, region, access_key, "
                    "secret_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        project,
                        request.alias,
                        request.endpoint,
                        request.region,
                        request.access_key,
                        request.secret_key,
                        now,
                    ),
                )
        except IntegrityError:
            raise conflict(
                f"datastore {request.alias} already exists in project {project}; delete it "
                "first to change it",
                alias=request.alias,
            )
        log.info(
            "project=%s datastore %s added (%s, %s)",
            project,
            request.alias,
            request.endpoint,
            request.region,
        )
        return wire.Datastore(
            alias=request.alias, endpoint=request.endpoint, region=request.region, created_at=now
        )

    async def list(self, project: str) -> list[wire.Datastore]:
        async with self.db.read() as tx:
            rows = await tx.all(
                "SELECT alias, endpoint, region, created_at FROM datastores WHERE project = ? "
                "ORDER BY alias",
                (project,),
            )
        return [_view(r) for r in rows]

    async def delete(self, project: str, alias: str) -> wire.Datastore:
        async with self.db.transaction() as tx:
            row = await tx.one(
                "SELECT * FROM datastores WHERE project = ? AND alias = ?", (project, alias)
            )
            if row is None:
                raise not_found("datastore", alias)
            # The volumes are JSON text; one project's notebooks are few enough to read here.
            rows = await tx.all(
                "SELECT id, volumes FROM notebooks WHERE project = ? AND state != ? "
                "AND volumes != '[]' ORDER BY created_at, id",
                (project, NotebookState.DELETED.value),
            )
            ids = [r["id"] for r in rows if any(v.alias == alias for v in stored_volumes(r))]
            if ids:
                raise conflict(
                    f"datastore {alias} is used by notebook(s) {', '.join(ids)}; delete them first",
                    alias=alias,
                    notebooks=ids,
                )
            await tx.run("DELETE FROM datastores WHERE project = ? AND alias = ?", (project, alias))
        log.info("project=%s datastore %s deleted", project, alias)
        return _view(row)
