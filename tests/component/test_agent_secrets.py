"""Agents' secrets in the database (on SQLite and PostgreSQL): ``add-host`` through the CLI
while a scheduler runs, sealed at rest, a replica given another key file, and the import of the
files an older scheduler kept in ``agent_secrets_dir``."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import msgspec
import pytest
from cryptography.fernet import Fernet

from scheduler.agent_secrets import SecretsKeyMismatch
from scheduler.api.context import CONTEXT
from scheduler.main import main
from scheduler.secrets import secrets_key_path
from tests.component.conftest import Agent, FakeClock, Harness, make_config


def _config_file(harness: Harness, tmp_path: Path, **settings: str) -> str:
    """The running scheduler's settings as an operator's TOML file (``settings`` win)."""
    config = harness.config
    values = {
        "database": config.database,
        "database_url": config.database_url,
        "admin_token_file": config.admin_token_file,
        "agent_secrets_dir": config.agent_secrets_dir,
        **settings,
    }
    path = tmp_path / "scheduler.toml"
    path.write_text("".join(f'{name} = "{value}"\n' for name, value in values.items()))
    return str(path)


async def _add_host(config_file: str, host_id: str, capsys: pytest.CaptureFixture[str]):
    """``nbfleet-scheduler add-host`` as its own run (a thread: it runs its own event loop)."""
    code = await asyncio.to_thread(main, ["add-host", host_id, "--config", config_file])
    out, err = capsys.readouterr()
    return code, out.strip(), err


async def test_add_host_through_the_cli_lets_the_agent_in_without_a_restart(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, secret, _ = await _add_host(_config_file(harness, tmp_path), "gpu-07", capsys)
    assert code == 0 and len(bytes.fromhex(secret)) == 32
    agent = Agent(harness, "gpu-07", secret.encode())
    secrets = harness.app[CONTEXT].agent_secrets

    # Not known to this scheduler yet: the first request is refused and brings the reload
    # forward; the loop's next pass (tick) loads it, and the agent's retry is accepted.
    assert (await agent.heartbeat()).status == 401
    await secrets.tick()
    await agent.register(gpus=1)
    assert (await agent.heartbeat()).status == 200

    # Run again, it keeps the secret; removed from the database, it stops working at the
    # next reload.
    assert (await _add_host(_config_file(harness, tmp_path), "gpu-07", capsys))[1] == secret
    async with harness.app[CONTEXT].db.transaction() as tx:
        await tx.run("DELETE FROM agent_secrets WHERE host_id = ?", ("gpu-07",))
    await secrets.tick()
    assert (await agent.heartbeat()).status == 401


async def test_a_stored_secret_is_sealed_with_the_key_file(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, secret, _ = await _add_host(_config_file(harness, tmp_path), "gpu-01", capsys)
    assert code == 0
    [(sealed,)] = harness.committed(
        "SELECT sealed FROM agent_secrets WHERE host_id = ?", ("gpu-01",)
    )
    assert secret not in sealed and bytes.fromhex(secret).hex() not in sealed.lower()
    key = secrets_key_path(harness.config).read_bytes().strip()
    assert Fernet(key).decrypt(sealed.encode()).decode() == secret
    assert (secrets_key_path(harness.config).stat().st_mode & 0o777) == 0o600


async def test_another_key_file_is_refused_naming_the_host_and_the_file(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (await _add_host(_config_file(harness, tmp_path), "gpu-01", capsys))[0] == 0
    other_key = tmp_path / "replica-2" / "agent_secrets.key"

    code, out, err = await _add_host(
        _config_file(harness, tmp_path, secrets_key_file=str(other_key)), "gpu-01", capsys
    )
    assert (code, out) == (2, "")
    assert "host gpu-01" in err and str(other_key) in err
    assert "every scheduler replica must be given the same secrets_key_file" in err

    replica = Harness(
        config=msgspec.structs.replace(harness.config, secrets_key_file=str(other_key)),
        clock=harness.clock,
    )
    with pytest.raises(SecretsKeyMismatch) as refused:
        await replica.start()
    await replica.close()
    assert refused.value.host_id == "gpu-01" and refused.value.key_file == other_key


async def test_old_secret_files_are_imported_once_and_left_in_place(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path)
    old = Path(config.agent_secrets_dir)
    old.mkdir()
    (old / "gpu-old").write_text("ab" * 32 + "\n")
    (old / "gpu-gone").write_text("cd" * 32 + "\n")
    harness = Harness(config=config, clock=clock)
    with caplog.at_level(logging.INFO, logger="scheduler.agent_secrets"):
        await harness.start()
    try:
        assert "2 agent secret file(s)" in caplog.text and "no longer read" in caplog.text
        assert (old / "gpu-old").exists() and (old / "gpu-gone").exists()
        upgraded = Agent(harness, "gpu-old", ("ab" * 32).encode())
        await upgraded.register(gpus=1)
        sealed = harness.committed("SELECT host_id, sealed FROM agent_secrets ORDER BY 1")
        assert [host for host, _ in sealed] == ["gpu-gone", "gpu-old"]
        assert all("ab" * 32 not in value for _, value in sealed)

        # A host removed from the database stays removed: its old file is not read again.
        async with harness.app[CONTEXT].db.transaction() as tx:
            await tx.run("DELETE FROM agent_secrets WHERE host_id = ?", ("gpu-gone",))
        caplog.clear()
        await harness.restart()
        assert "imported" not in caplog.text
        assert await harness.app[CONTEXT].agent_secrets.import_files(old) == 0
        gone = Agent(harness, "gpu-gone", ("cd" * 32).encode())
        assert (await gone.heartbeat()).status == 401
        assert (await upgraded.heartbeat()).status == 200
    finally:
        await harness.close()
