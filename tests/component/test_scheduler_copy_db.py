"""``nbfleet-scheduler copy-db``: an installation built through the API on SQLite, copied into
a fresh PostgreSQL database, answers every listing there as it did before; a target holding
data, or at another migration level, is refused and left as it was.

These tests build their own harnesses (SQLite first, PostgreSQL after) instead of the
parametrized ``harness`` fixture: the point is the move from one database to the other.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from scheduler.main import main
from scheduler.replicas import BOOKKEEPING
from scheduler.schema import migration_files
from tests.component.conftest import START, FakeClock, Harness, Tokens, make_config
from tests.component.test_scheduler_datastores import add_store, volume
from tests.component.test_scheduler_snapshots import report_snapshot, snapshot
from tests.support.postgres import PostgresDatabases, committed_rows, run_sync

#: Editor URLs name the scheduler's address: one for both servers, as behind one load balancer.
PUBLIC_URL = "https://nbfleet.example"


async def populate(h: Harness) -> dict[str, Any]:
    """Projects with quotas, tokens (one label-scoped), notebooks in several states with
    history and usage, a fork, backups, datastores with volumes, hosts (one cordoned)."""
    alpha = await h.project("alpha")
    beta = await h.project("beta")
    quota = await h.call(
        "PATCH", "/v1/admin/projects/alpha/quota", token=h.admin_token, body={"gpus": 6}
    )
    assert quota.status == 200, quota.text
    scoped = await h.call(
        "POST",
        "/v1/tokens",
        token=alpha.operator,
        body={"role": "read", "label_selector": {"team": "cv"}},
    )
    assert scoped.status == 201, scoped.text
    h1, h2, h3 = h.agent("h1"), h.agent("h2"), h.agent("h3")
    for agent in (h1, h2, h3):
        await agent.register(gpus=2)
    assert (await add_store(alpha)).status == 201
    assert (await add_store(alpha, alias="archive")).status == 201

    running = (await alpha.run(gpu=1, labels={"team": "cv"}, volumes=[volume()])).json
    on = {
        a["notebook"]: agent for agent in (h1, h2, h3) for a in (await agent.assignments())["items"]
    }
    host = on[running["id"]]
    await host.report(running["id"], "RUNNING", url="http://h:5/lab")
    stopped = (await alpha.run(gpu=0, cpu=2, name="cpu-only")).json
    await on_host(h, stopped["id"]).report(stopped["id"], "RUNNING", url="http://h:6/lab")
    h.clock.advance(600)
    for nb in (running, stopped):
        agent = on_host(h, nb["id"])
        assert (await agent.usage(nb["id"], 10)).status == 200
    await report_snapshot(host, running["id"], snapshot("s1", START + 100))
    await report_snapshot(host, running["id"], snapshot("s2", START + 500, kind="checkpoint"))
    assert (await alpha.action(stopped["id"], "stop")).status == 202
    await on_host(h, stopped["id"]).report(stopped["id"], "STOPPED")
    fork = await h.call(
        "POST",
        f"/v1/notebooks/{running['id']}/fork",
        token=alpha.operator,
        body={"backup": "s1", "name": "experiment-2"},
    )
    assert fork.status == 201, fork.text
    deleted = (await beta.run(gpu=0, cpu=1)).json
    assert (await beta.action(deleted["id"], "delete")).status in (200, 202, 204)
    pending = (await beta.run(gpu=0, cpu=1, labels={"env": "dev"})).json
    assert (await h.call("POST", "/v1/admin/hosts/h3/cordon", token=h.admin_token)).status == 200
    h.clock.advance(60)
    ids = [running["id"], stopped["id"], fork.json["id"], deleted["id"], pending["id"]]
    return {"alpha": alpha, "beta": beta, "scoped": scoped.json["token"], "notebooks": ids}


def on_host(h: Harness, notebook: str):
    row = h.committed("SELECT host_id FROM notebooks WHERE id = ?", (notebook,))
    return h.agent(row[0][0])


async def listings(h: Harness, made: dict[str, Any]) -> dict[str, Any]:
    """Every listing the API gives, by path and token."""
    alpha: Tokens = made["alpha"]
    beta: Tokens = made["beta"]
    asked = [
        ("/v1/admin/projects", h.admin_token),
        ("/v1/admin/projects/alpha", h.admin_token),
        ("/v1/admin/projects/beta", h.admin_token),
        ("/v1/admin/hosts", h.admin_token),
        (f"/v1/admin/usage?from={START - 3600}", h.admin_token),
        ("/v1/quota", alpha.read),
        ("/v1/quota", beta.read),
        ("/v1/tokens", alpha.operator),
        ("/v1/tokens", beta.operator),
        ("/v1/datastores", alpha.read),
        ("/v1/datastores", beta.read),
        ("/v1/notebooks", alpha.read),
        ("/v1/notebooks", beta.read),
        ("/v1/notebooks", made["scoped"]),
        (f"/v1/projects/alpha/usage?from={START - 3600}", alpha.read),
        (f"/v1/projects/alpha/usage?from={START - 3600}&group_by=notebook", alpha.read),
        (f"/v1/projects/alpha/usage?from={START - 3600}&group_by=label&label_key=team", alpha.read),
        (f"/v1/projects/beta/usage?from={START - 3600}", beta.read),
    ]
    for nb in made["notebooks"]:
        for token in (alpha.read, beta.read):
            asked += [
                (f"/v1/notebooks/{nb}", token),
                (f"/v1/notebooks/{nb}/history", token),
                (f"/v1/notebooks/{nb}/backups", token),
            ]
    seen = {}
    for path, token in asked:
        reply = await h.call("GET", path, token=token)
        seen[(path, token)] = (
            reply.status,
            reply.json if reply.content_type.endswith("json") else reply.text,
        )
    # The agents' view too: what each host is told to run.
    for host in ("h1", "h2", "h3"):
        seen[("assignments", host)] = await h.agent(host).assignments()
    return seen


def differences(before: Any, after: Any, where: str = "") -> list[str]:
    """Where two listings differ, each as ``path: before != after`` (readable failures)."""
    if isinstance(before, dict) and isinstance(after, dict) and before.keys() == after.keys():
        return [d for k in before for d in differences(before[k], after[k], f"{where}/{k}")]
    if (
        isinstance(before, (list, tuple))
        and isinstance(after, (list, tuple))
        and len(before) == len(after)
    ):
        return [
            d
            for i, (b, a) in enumerate(zip(before, after, strict=True))
            for d in differences(b, a, f"{where}[{i}]")
        ]
    return [] if before == after else [f"{where}: {before!r} != {after!r}"]


@pytest.fixture
def postgres(postgres_databases: PostgresDatabases):
    made: list[str] = []

    def fresh(migrated: bool = True) -> str:
        url = postgres_databases.fresh() if migrated else postgres_databases.empty()
        made.append(url)
        return url

    yield fresh
    for url in made:
        postgres_databases.drop(url)


async def built(tmp_path: Path) -> tuple[Harness, dict[str, Any]]:
    h = Harness(config=make_config(tmp_path, public_url=PUBLIC_URL), clock=FakeClock())
    await h.start()
    try:
        return h, await populate(h)
    except BaseException:
        await h.close()
        raise


async def copy_db(
    source: str, target: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """The command as an operator runs it (in a thread: it runs an event loop of its own)."""
    capsys.readouterr()
    code = await asyncio.to_thread(
        main, ["copy-db", "--from", f"sqlite://{source}", "--to", target]
    )
    out, err = capsys.readouterr()
    return code, out, err


async def test_every_listing_reads_the_same_after_the_copy(
    tmp_path: Path, postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    h, made = await built(tmp_path)
    before = await listings(h, made)
    # Listings again: reading them changed nothing they show.
    assert await listings(h, made) == before
    await h.close()
    source = h.config.database
    counts = {
        t: sqlite3.connect(source).execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]
        for (t,) in sqlite3.connect(source).execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND name != 'schema_migrations'"
        )
        if t not in BOOKKEEPING  # what the running scheduler kept of itself is not copied
    }
    assert counts["state_history"] > 5 and counts["snapshots"] == 2 and counts["usage"] > 0

    target = postgres()
    code, out, err = await copy_db(source, target, capsys)
    assert code == 0, err
    assert "must be stopped" in out
    for table, count in counts.items():
        assert f"{table}: {count} rows" in out
    assert f"copied {sum(counts.values())} rows" in out

    moved = Harness(
        config=make_config(tmp_path, database_url=target, public_url=PUBLIC_URL),
        clock=FakeClock(h.clock.now),
    )
    moved._agents = h._agents
    await moved.start()
    try:
        for agent in moved._agents.values():
            agent.harness = moved
        after = await listings(moved, made)
        assert differences(before, after) == []
        # New rows number after the copied ones: a new notebook lists last, its history goes on.
        alpha = Tokens(moved, "alpha", made["alpha"].operator, made["alpha"].read)
        nb = (await alpha.run(gpu=0, cpu=1)).json
        listed = await moved.call("GET", "/v1/notebooks", token=alpha.read)
        assert listed.json["items"][-1]["id"] == nb["id"]
        history = await moved.call("GET", f"/v1/notebooks/{nb['id']}/history", token=alpha.read)
        assert history.status == 200, history.text
        token = await moved.call("POST", "/v1/tokens", token=alpha.operator, body={})
        assert token.status == 201, token.text
        tokens = await moved.call("GET", "/v1/tokens", token=alpha.operator)
        assert tokens.json["items"][-1]["id"] == token.json["id"]
    finally:
        await moved.close()


async def test_a_target_holding_data_is_refused_and_left_alone(
    tmp_path: Path, postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    h, _ = await built(tmp_path)
    await h.close()
    target = postgres()
    assert (await copy_db(h.config.database, target, capsys))[0] == 0
    projects = committed_rows(target, "SELECT name FROM projects ORDER BY name")
    code, _, err = await copy_db(h.config.database, target, capsys)
    assert code == 2
    assert "already holds data" in err and "table " in err
    assert committed_rows(target, "SELECT name FROM projects ORDER BY name") == projects


async def test_other_migration_levels_are_refused_naming_the_versions(
    tmp_path: Path, postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    h, _ = await built(tmp_path)
    await h.close()
    source = h.config.database
    names = [name for name, _ in migration_files()]

    unmigrated = postgres(migrated=False)
    code, _, err = await copy_db(source, unmigrated, capsys)
    assert code == 2
    assert "no migration" in err and "nbfleet-scheduler migrate" in err and names[-1] in err

    behind = postgres()
    run_sync(_forget(behind, names[-1]))
    code, _, err = await copy_db(source, behind, capsys)
    assert code == 2
    assert f"target {behind}: {names[-2]} (lacks {names[-1]})" in err
    assert committed_rows(behind, "SELECT COUNT(*) FROM projects") == [(0,)]

    # A source that lacks a migration: refused too, and told how to bring it up to date.
    with sqlite3.connect(source) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version = ?", (names[-1],))
    code, _, err = await copy_db(source, postgres(), capsys)
    assert code == 2
    assert f"(lacks {names[-1]})" in err and "starting this version's scheduler" in err


async def _forget(url: str, version: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DELETE FROM schema_migrations WHERE version = $1", version)
    finally:
        await conn.close()


def test_copy_db_refuses_urls_of_the_wrong_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["copy-db", "--from", "postgresql://x/y", "--to", "postgresql://x/z"]) == 2
    assert "--from must be a sqlite:///path URL" in capsys.readouterr().err
    assert main(["copy-db", "--from", "sqlite:///nowhere.db", "--to", "sqlite:///b.db"]) == 2
    assert "--to must be a postgresql://" in capsys.readouterr().err
