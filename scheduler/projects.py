"""Projects and their bearer tokens (stored as sha256 digests only)."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from common import wire
from common.auth import new_token, token_digest
from common.errors import conflict, not_found
from scheduler.db import Database

PROJECT_TOKEN_PREFIX = "nbf_"
ADMIN_TOKEN_PREFIX = "nba_"


@dataclass(frozen=True)
class Principal:
    """Who a project token speaks for."""

    project: str
    role: str

    @property
    def may_operate(self) -> bool:
        return self.role == "operator"


class ProjectService:
    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self.db = db
        self.clock = clock

    async def create_project(self, request: wire.ProjectCreate) -> wire.Project:
        now = self.clock()
        try:
            async with self.db.transaction() as tx:
                await tx.run(
                    "INSERT INTO projects (name, created_at) VALUES (?, ?)", (request.name, now)
                )
        except sqlite3.IntegrityError:
            raise conflict(f"project {request.name} already exists", project=request.name)
        return wire.Project(name=request.name, created_at=now)

    async def list_projects(self) -> list[wire.Project]:
        async with self.db.read() as tx:
            rows = await tx.all("SELECT name, created_at FROM projects ORDER BY name")
        return [wire.Project(name=r["name"], created_at=r["created_at"]) for r in rows]

    async def create_token(self, request: wire.TokenCreate) -> wire.TokenCreated:
        token = new_token(PROJECT_TOKEN_PREFIX)
        token_id = secrets.token_hex(8)
        async with self.db.transaction() as tx:
            if await tx.one("SELECT 1 FROM projects WHERE name = ?", (request.project,)) is None:
                raise not_found("project", request.project)
            await tx.run(
                "INSERT INTO tokens (id, project, role, digest, description, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    token_id,
                    request.project,
                    request.role,
                    token_digest(token),
                    request.description,
                    self.clock(),
                ),
            )
        return wire.TokenCreated(
            id=token_id, project=request.project, role=request.role, token=token
        )

    async def principal(self, token: str) -> Principal | None:
        async with self.db.read() as tx:
            row = await tx.one(
                "SELECT project, role FROM tokens WHERE digest = ?", (token_digest(token),)
            )
        return None if row is None else Principal(project=row["project"], role=row["role"])
