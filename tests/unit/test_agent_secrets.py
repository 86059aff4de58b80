"""``AgentSecrets`` on an in-memory SQLite database: what a request from an unknown host costs
(a reload brought forward, at most once per ``MISS_RELOAD_MIN_S``), and a row sealed under
another key skipped by a reload instead of failing it."""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet

from scheduler.agent_secrets import MISS_RELOAD_MIN_S, AgentSecrets
from scheduler.db_sqlite import SqliteDatabase


class CountingWakes(AgentSecrets):
    wakes = 0

    def wake(self) -> None:
        self.wakes += 1


async def test_unknown_hosts_bring_a_reload_forward_at_most_once_per_interval() -> None:
    now = [100.0]
    db = SqliteDatabase(":memory:")
    await db.open()
    try:
        secrets = CountingWakes(db, Fernet.generate_key(), Path("k"), monotonic=lambda: now[0])
        await secrets.load()
        assert secrets("gpu-new") is None and secrets.wakes == 0  # just loaded
        now[0] += MISS_RELOAD_MIN_S
        for _ in range(50):
            assert secrets("gpu-new") is None
        assert secrets.wakes == 1
        assert secrets("../admin.token") is None and secrets.wakes == 1  # never a host id
        secret = await secrets.ensure("gpu-new")
        assert secrets("gpu-new") == secret.encode()
    finally:
        await db.close()


async def test_a_reload_skips_a_secret_sealed_under_another_key() -> None:
    db = SqliteDatabase(":memory:")
    await db.open()
    try:
        other = AgentSecrets(db, Fernet.generate_key(), Path("other.key"))
        await other.ensure("gpu-a")
        mine = AgentSecrets(db, Fernet.generate_key(), Path("mine.key"))
        await mine.ensure("gpu-b")
        await mine.tick()  # not strict: logged, and gpu-a's requests get 401
        assert mine("gpu-a") is None and mine("gpu-b") is not None
    finally:
        await db.close()
