"""Projects, their quotas, and their bearer tokens (stored as sha256 digests only).

A token may carry a label selector: it then reaches only the project's notebooks that carry
every one of those labels (others answer 403), and notebooks it creates get those labels.

Operators create tokens for any project (``/v1/admin/tokens``); a project's own operator tokens
create, list and delete that project's tokens (``/v1/tokens``). A token limited by a label
selector only ever sees and makes tokens at least as limited as itself, so it cannot widen its
own reach. Deleting a token forgets every remembered principal at once: the token stops
working on the next request, at the scheduler and at the agents' editor proxies (which ask
``/v1/agents/authorize``).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from common import wire
from common.auth import new_token, token_digest
from common.config import QuotaDefaults
from common.errors import ApiError, conflict, not_found
from scheduler import quota
from scheduler.db import Database, IntegrityError, Row, Tx

log = logging.getLogger(__name__)

PROJECT_TOKEN_PREFIX = "nbf_"
ADMIN_TOKEN_PREFIX = "nba_"
#: How long a looked-up token is remembered.
PRINCIPAL_CACHE_S = 10.0


@dataclass(frozen=True)
class Principal:
    """Who a project token speaks for."""

    project: str
    role: str
    #: Labels a notebook must carry for this token to reach it (empty: every notebook).
    selector: dict[str, str] = field(default_factory=dict)

    @property
    def may_operate(self) -> bool:
        return self.role == "operator"

    def reaches(self, labels: dict[str, str]) -> bool:
        """Whether something carrying ``labels`` (a notebook, or a token's selector) is within
        this token's selector."""
        return all(labels.get(k) == v for k, v in self.selector.items())


def selector_text(selector: dict[str, str]) -> str:
    """``team=nlp, tier=dev``, for messages."""
    return ", ".join(f"{k}={v}" for k, v in sorted(selector.items()))


class ProjectService:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], float],
        quota_defaults: QuotaDefaults | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.quota_defaults = quota_defaults or QuotaDefaults()
        self._principals: dict[str, tuple[Principal, float]] = {}
        #: Bumped by every forget_principals(), so a lookup racing a delete is not remembered.
        self._forgotten = 0

    async def _view(self, tx: Tx, row: Row) -> wire.Project:
        queued = await tx.one(
            "SELECT COUNT(*) AS n FROM notebooks WHERE project = ? AND state = 'QUEUED'",
            (row["name"],),
        )
        return wire.Project(
            name=row["name"],
            created_at=row["created_at"],
            quota=await quota.limits(tx, row["name"], self.quota_defaults),
            used=await quota.use(tx, row["name"]),
            queued=queued["n"] if queued else 0,
        )

    async def get_project(self, name: str) -> wire.Project:
        async with self.db.read() as tx:
            row = await tx.one("SELECT name, created_at FROM projects WHERE name = ?", (name,))
            if row is None:
                raise not_found("project", name)
            return await self._view(tx, row)

    async def set_quota(self, name: str, change: wire.QuotaUpdate) -> wire.Project:
        async with self.db.transaction() as tx:
            if await tx.one("SELECT 1 FROM projects WHERE name = ?", (name,)) is None:
                raise not_found("project", name)
            await quota.update(tx, name, change)
        return await self.get_project(name)

    async def create_project(self, request: wire.ProjectCreate) -> wire.Project:
        now = self.clock()
        try:
            async with self.db.transaction() as tx:
                await tx.run(
                    "INSERT INTO projects (name, created_at) VALUES (?, ?)", (request.name, now)
                )
        except IntegrityError:
            raise conflict(f"project {request.name} already exists", project=request.name)
        return await self.get_project(request.name)

    async def list_projects(self) -> list[wire.Project]:
        async with self.db.read() as tx:
            rows = await tx.all("SELECT name, created_at FROM projects ORDER BY name")
            return [await self._view(tx, r) for r in rows]

    async def create_token(self, request: wire.TokenCreate) -> wire.TokenCreated:
        token = new_token(PROJECT_TOKEN_PREFIX)
        token_id = secrets.token_hex(8)
        async with self.db.transaction() as tx:
            if await tx.one("SELECT 1 FROM projects WHERE name = ?", (request.project,)) is None:
                raise not_found("project", request.project)
            await tx.run(
                "INSERT INTO tokens (id, project, role, digest, description, created_at, "
                "label_selector) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    token_id,
                    request.project,
                    request.role,
                    token_digest(token),
                    request.description,
                    self.clock(),
                    json.dumps(request.label_selector),
                ),
            )
        return wire.TokenCreated(
            id=token_id,
            project=request.project,
            role=request.role,
            token=token,
            label_selector=dict(request.label_selector),
        )

    async def create_project_token(
        self, principal: Principal, request: wire.ProjectTokenCreate
    ) -> wire.TokenCreated:
        """A token of ``principal``'s project, carrying at least its selector (a token scoped
        to ``team=nlp`` makes only tokens scoped to ``team=nlp``, maybe narrower)."""
        selector = dict(request.label_selector)
        for key, value in principal.selector.items():
            if selector.setdefault(key, value) != value:
                raise ApiError(
                    "forbidden",
                    f"this token is limited to {selector_text(principal.selector)}; it cannot "
                    f"create a token limited to {key}={selector[key]}",
                    label=key,
                )
        return await self.create_token(
            wire.TokenCreate(
                project=principal.project,
                role=request.role,
                description=request.description,
                label_selector=selector,
            )
        )

    async def list_tokens(self, principal: Principal) -> list[wire.TokenInfo]:
        """The project's tokens ``principal`` may see: all of them, or for a token limited by
        a selector, those at least as limited."""
        async with self.db.read() as tx:
            rows = await tx.all(
                "SELECT * FROM tokens WHERE project = ? ORDER BY created_at, rowid",
                (principal.project,),
            )
        tokens = [_token_info(row) for row in rows]
        return [t for t in tokens if principal.reaches(t.label_selector)]

    async def delete_token(self, principal: Principal, token_id: str) -> wire.TokenInfo:
        """Delete a token of ``principal``'s project (404 for another project's). It stops
        authenticating at once: remembered principals are forgotten."""
        async with self.db.transaction() as tx:
            row = await tx.one(
                "SELECT * FROM tokens WHERE id = ? AND project = ?", (token_id, principal.project)
            )
            if row is None:
                raise not_found("token", token_id)
            token = _token_info(row)
            if not principal.reaches(token.label_selector):
                raise ApiError(
                    "forbidden",
                    f"this token is limited to {selector_text(principal.selector)}; token "
                    f"{token_id} reaches more, so it cannot delete it",
                    selector=principal.selector,
                )
            await tx.run("DELETE FROM tokens WHERE id = ?", (token_id,))
        self.forget_principals()
        log.info("project=%s token %s (%s) deleted", token.project, token.id, token.role)
        return token

    async def principal(self, token: str) -> Principal | None:
        """Who ``token`` speaks for. Known tokens are remembered for ``PRINCIPAL_CACHE_S``
        (every request carries one); any change to tokens clears the memory."""
        digest = token_digest(token)
        now = self.clock()
        cached = self._principals.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        forgotten = self._forgotten
        row = await self.db.query_one(
            "SELECT project, role, label_selector FROM tokens WHERE digest = ?", (digest,)
        )
        if row is None:
            return None
        principal = Principal(
            project=row["project"], role=row["role"], selector=json.loads(row["label_selector"])
        )
        if len(self._principals) > 10_000:
            self._principals.clear()
        if forgotten == self._forgotten:
            # Not when a delete committed while this lookup waited: it may have read the
            # deleted row, and must not remember it.
            self._principals[digest] = (principal, now + PRINCIPAL_CACHE_S)
        return principal

    def forget_principals(self) -> None:
        """Forget every remembered token (after a token was deleted)."""
        self._principals.clear()
        self._forgotten += 1


def _token_info(row: Row) -> wire.TokenInfo:
    return wire.TokenInfo(
        id=row["id"],
        project=row["project"],
        role=row["role"],
        description=row["description"],
        label_selector=json.loads(row["label_selector"]),
        created_at=row["created_at"],
    )
