"""``nbfleet-scheduler add-host`` and ``admin-token``."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from scheduler.main import main


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "scheduler.toml"
    path.write_text(
        f'database = "{tmp_path / "db.sqlite"}"\n'
        f'admin_token_file = "{tmp_path / "etc" / "admin.token"}"\n'
        f'agent_secrets_dir = "{tmp_path / "agents"}"\n'
    )
    return path


def test_add_host_creates_then_keeps_the_secret(config_file: Path, capsys) -> None:
    assert main(["add-host", "gpu-01", "--config", str(config_file)]) == 0
    secret = capsys.readouterr().out.strip()
    assert len(bytes.fromhex(secret)) == 32
    path = config_file.parent / "agents" / "gpu-01"
    assert path.read_text().strip() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert main(["add-host", "gpu-01", "--config", str(config_file)]) == 0
    assert capsys.readouterr().out.strip() == secret


def test_add_host_refuses_a_path(config_file: Path, capsys) -> None:
    assert main(["add-host", "../escape", "--config", str(config_file)]) == 2
    assert "host id" in capsys.readouterr().err
    assert not (config_file.parent / "escape").exists()


def test_admin_token_created_once(config_file: Path, capsys) -> None:
    assert main(["admin-token", "--config", str(config_file)]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("nba_")
    path = config_file.parent / "etc" / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert main(["admin-token", "--config", str(config_file)]) == 0
    assert capsys.readouterr().out.strip() == token


def test_environment_overrides_and_bad_config(
    config_file: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("NBFLEET_SCHEDULER_AGENT_SECRETS_DIR", str(tmp_path / "other"))
    assert main(["add-host", "h1", "--config", str(config_file)]) == 0
    assert (tmp_path / "other" / "h1").exists()
    assert main(["add-host", "h1", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
