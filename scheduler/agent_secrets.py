"""Agents' HMAC secrets in the database, so every scheduler replica verifies every agent.

A secret is stored sealed (Fernet, from ``cryptography``) under the key in
``secrets_key_file`` (:func:`scheduler.secrets.ensure_secrets_key`); the row alone never gives
it away. Every replica must be given the same key file: a secret that does not open with a
replica's key raises :class:`SecretsKeyMismatch`, naming the host and the key file.

:class:`AgentSecrets` answers ``secret_for(host_id)`` synchronously, as
:class:`common.auth.Verifier` and :class:`scheduler.agent_client.AgentClient` call it, from an
in-memory copy of the table. The copy is loaded at start and reloaded every ``reload_s`` (a
:class:`~scheduler.loops.base.Loop`), and at once when a host it does not know signs a request
(at most one reload per ``MISS_RELOAD_MIN_S``, so a stream of unknown hosts costs the database
little). So a host added by ``add-host`` on any machine is accepted by the second request it
sends after the reload its first one caused (the first gets 401 and the agent retries), and
within ``reload_s`` in any case; a deleted row stops working within ``reload_s``.

**Old installations** kept one file per host in ``agent_secrets_dir``: :meth:`import_files`
copies each into the database once (recorded in ``agent_secret_files``; a host the database
already has keeps its secret), and the files are no longer read. It runs at every start and
in ``add-host``, and is idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from common.auth import read_secret
from common.config import SchedulerConfig
from scheduler.db import Database, Tx, database_for
from scheduler.loops.base import Loop
from scheduler.secrets import (
    ensure_secrets_key,
    host_id_error,
    new_agent_secret,
    secrets_key_path,
    valid_host_id,
    write_agent_secret_file,
)

log = logging.getLogger(__name__)

#: Unknown hosts bring a reload forward at most this often.
MISS_RELOAD_MIN_S = 1.0


class SecretsKeyMismatch(Exception):
    """A stored agent secret does not open with this scheduler's key file."""

    def __init__(self, host_id: str, key_file: Path) -> None:
        self.host_id = host_id
        self.key_file = key_file
        super().__init__(
            f"the stored secret of host {host_id} does not decrypt with the key in {key_file}: "
            "every scheduler replica must be given the same secrets_key_file (copy it from the "
            "machine whose scheduler or add-host first created it)"
        )


class AgentSecrets(Loop):
    """The agents' secrets (module docstring). ``self(host_id)`` is ``secret_for``: the
    secret as bytes, or ``None`` for an unknown host."""

    name = "agent-secrets"

    def __init__(
        self,
        db: Database,
        key: bytes,
        key_file: Path,
        *,
        reload_s: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(reload_s)
        self.db = db
        self.key_file = key_file
        self._fernet = Fernet(key)
        self._monotonic = monotonic
        self._secrets: dict[str, bytes] = {}
        #: host -> (sealed, secret): a reload decrypts only rows that changed.
        self._opened: dict[str, tuple[str, bytes]] = {}
        self._loaded_at = self._woken_at = float("-inf")

    def __call__(self, host_id: str) -> bytes | None:
        secret = self._secrets.get(host_id)
        if secret is None and valid_host_id(host_id):
            now = self._monotonic()
            if now - max(self._loaded_at, self._woken_at) >= MISS_RELOAD_MIN_S:
                self._woken_at = now
                self.wake()
        return secret

    async def tick(self) -> None:
        await self.load(strict=False)

    async def load(self, *, strict: bool = True) -> None:
        """Replace the in-memory copy with the table. A row that does not open raises
        :class:`SecretsKeyMismatch` when ``strict`` (at start: this replica was given another
        key file); else it is logged and that host's requests get 401."""
        async with self.db.read() as tx:
            rows = await tx.all("SELECT host_id, sealed FROM agent_secrets")
        self._loaded_at = self._monotonic()
        opened: dict[str, tuple[str, bytes]] = {}
        for row in rows:
            host_id, sealed = row["host_id"], row["sealed"]
            known = self._opened.get(host_id)
            if known is not None and known[0] == sealed:
                opened[host_id] = known
                continue
            try:
                opened[host_id] = (sealed, self._open(host_id, sealed))
            except SecretsKeyMismatch as exc:
                if strict:
                    raise
                log.error("host=%s %s; its requests get 401", host_id, exc)
        self._opened = opened
        self._secrets = {host: secret for host, (_, secret) in opened.items()}

    async def ensure(self, host_id: str) -> str:
        """The secret of ``host_id``, created if the database has none (and known to this
        process at once). Raises ValueError for a host id that is not valid."""
        if not valid_host_id(host_id):
            raise ValueError(host_id_error(host_id))
        async with self.db.transaction() as tx:
            row = await tx.one("SELECT sealed FROM agent_secrets WHERE host_id = ?", (host_id,))
            if row is not None:
                secret = self._open(host_id, row["sealed"]).decode()
            else:
                secret = new_agent_secret()
                await self._store(tx, host_id, secret)
                log.info("host=%s secret created in the database", host_id)
            # add-host leaves the operator a copy in agent_secrets_dir: not one to import.
            await self._record_file(tx, host_id)
        self.remember(host_id, secret)
        return secret

    def remember(self, host_id: str, secret: str) -> None:
        """Know ``secret`` at once, before the next reload: one this process has just stored,
        or one another process has (a test's ``add-host`` while this scheduler runs)."""
        self._secrets[host_id] = secret.encode()

    async def import_files(self, secrets_dir: str | Path) -> int:
        """Import the secret files of ``secrets_dir`` not imported before (module docstring);
        returns how many were stored."""
        folder = Path(secrets_dir)
        if not folder.is_dir():
            return 0
        found = {}
        for path in sorted(folder.iterdir()):
            if path.is_file() and valid_host_id(path.name):
                try:
                    found[path.name] = read_secret(path).decode()
                except (OSError, ValueError) as exc:
                    log.warning("host=%s secret file %s not imported: %s", path.name, path, exc)
        if not found:
            return 0
        stored = 0
        async with self.db.transaction() as tx:
            done = await tx.all("SELECT host_id FROM agent_secret_files")
            for host_id in found.keys() - {row["host_id"] for row in done}:
                row = await tx.one("SELECT sealed FROM agent_secrets WHERE host_id = ?", (host_id,))
                if row is None:
                    await self._store(tx, host_id, found[host_id])
                    stored += 1
                elif self._open(host_id, row["sealed"]).decode() != found[host_id]:
                    log.warning(
                        "host=%s its file in %s differs from the database's secret; the "
                        "database's is kept",
                        host_id,
                        folder,
                    )
                await self._record_file(tx, host_id)
        if stored:
            log.info(
                "%d agent secret file(s) of %s imported into the database %s; the files are no "
                "longer read (keep them as the operator's copies, or delete them)",
                stored,
                folder,
                self.db.where,
            )
        return stored

    def _open(self, host_id: str, sealed: str) -> bytes:
        try:
            return self._fernet.decrypt(sealed.encode())
        except InvalidToken:
            raise SecretsKeyMismatch(host_id, self.key_file) from None

    async def _store(self, tx: Tx, host_id: str, secret: str) -> None:
        sealed = self._fernet.encrypt(secret.encode()).decode()
        await tx.run(
            "INSERT INTO agent_secrets (host_id, sealed, created_at) VALUES (?, ?, ?)",
            (host_id, sealed, time.time()),
        )

    @staticmethod
    async def _record_file(tx: Tx, host_id: str) -> None:
        await tx.run(
            "INSERT INTO agent_secret_files (host_id, recorded_at) VALUES (?, ?) "
            "ON CONFLICT (host_id) DO NOTHING",
            (host_id, time.time()),
        )


def agent_secrets_for(config: SchedulerConfig, db: Database) -> AgentSecrets:
    """The agent secrets of ``config``'s database, with its key file (created if absent)."""
    key_file = secrets_key_path(config)
    return AgentSecrets(db, ensure_secrets_key(key_file), key_file)


async def add_host(config: SchedulerConfig, host_id: str) -> str:
    """``nbfleet-scheduler add-host``: open the database, import old secret files, create (or
    keep) the host's secret, leave the operator's copy in ``agent_secrets_dir``; returns the
    secret. Raises ValueError (a bad host id or key file), :class:`SecretsKeyMismatch`, or
    :class:`scheduler.db.MigrationsPending` (PostgreSQL not migrated)."""
    if not valid_host_id(host_id):
        raise ValueError(host_id_error(host_id))
    db = database_for(config)
    secrets = agent_secrets_for(config, db)
    await db.open()
    try:
        await secrets.import_files(config.agent_secrets_dir)
        secret = await secrets.ensure(host_id)
    finally:
        await db.close()
    write_agent_secret_file(config.agent_secrets_dir, host_id, secret)
    return secret
