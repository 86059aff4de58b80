"""Secret files on disk: the admin token, the fleet's SSH host key, the key agent secrets are
sealed with in the database, and the operator's copy of an agent's secret.

The first three are created with mode 0600 and never overwritten, so ``admin-token`` and every
start can be run again safely and find the existing value. Agent secrets themselves live in the
database (:mod:`scheduler.agent_secrets`).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from pathlib import Path

from cryptography.fernet import Fernet

from common.auth import new_token, read_secret
from common.config import SchedulerConfig

log = logging.getLogger(__name__)

HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def valid_host_id(host_id: str) -> bool:
    """Host ids name files in ``agent_secrets_dir`` (the operator's copies); this keeps them
    inside it."""
    return bool(HOST_ID.fullmatch(host_id)) and host_id not in (".", "..")


def _create_exclusive(path: Path, content: str) -> bool:
    """Write ``content`` to a new 0600 file; False if it already exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(content + "\n")
    return True


def ensure_admin_token(path: str | Path) -> str:
    """The admin token in ``path``, created (0600) if absent."""
    path = Path(path)
    if _create_exclusive(path, new_token("nba_")):
        log.info("admin token created in %s", path)
    return read_secret(path).decode()


def _ensure_side_token(
    config: SchedulerConfig, configured: str, default_name: str, prefix: str, who: str
) -> str:
    """A token that reaches one thing only, in ``configured`` (by default ``default_name``
    beside ``admin_token_file``), created (0600) if absent; ``who`` gets a copy."""
    path = Path(configured) if configured else Path(config.admin_token_file).parent / default_name
    if _create_exclusive(path, new_token(prefix)):
        log.info("%s created in %s: give %s a copy", default_name, path, who)
    return read_secret(path).decode()


def ensure_router_token(config: SchedulerConfig) -> str:
    """The token routers ask notebooks' locations with (``router_token_file``)."""
    return _ensure_side_token(
        config, config.router_token_file, "router.token", "nbr_", "every router"
    )


def ensure_metrics_token(config: SchedulerConfig) -> str:
    """The token Prometheus scrapes ``/metrics`` with (``metrics_token_file``)."""
    return _ensure_side_token(
        config, config.metrics_token_file, "metrics.token", "nbm_", "your Prometheus server"
    )


def ensure_ssh_host_key(path: str | Path) -> str:
    """The fleet's SSH host key in ``path`` (OpenSSH format), created (ed25519, 0600) if
    absent."""
    path = Path(path)
    if not path.exists():
        import asyncssh  # only the scheduler's start-up needs it here

        key = asyncssh.generate_private_key("ssh-ed25519", comment="nbfleet notebooks")
        if _create_exclusive(path, key.export_private_key().decode()):
            log.info("ssh host key for the fleet's notebooks created in %s", path)
    return read_secret(path).decode()


def secrets_key_path(config: SchedulerConfig) -> Path:
    """The key file agent secrets are sealed with: ``secrets_key_file``, else
    ``agent_secrets.key`` beside ``admin_token_file``."""
    if config.secrets_key_file:
        return Path(config.secrets_key_file)
    return Path(config.admin_token_file).parent / "agent_secrets.key"


def ensure_secrets_key(path: str | Path) -> bytes:
    """The Fernet key in ``path``, created (0600) if absent. Every replica must be given the
    same file: a key made by one replica's first start opens nothing another replica sealed.
    Raises ValueError when the file does not hold a Fernet key."""
    path = Path(path)
    if _create_exclusive(path, Fernet.generate_key().decode()):
        log.info("key for agent secrets created in %s: give every replica this same file", path)
    key = read_secret(path)
    try:
        Fernet(key)
    except ValueError as exc:
        raise ValueError(f"{path} does not hold a key for agent secrets ({exc})") from None
    return key


def new_agent_secret() -> str:
    """A fresh agent HMAC secret: 32 random bytes as hex, what agents keep in ``secret_file``."""
    return secrets.token_hex(32)


def write_agent_secret_file(secrets_dir: str | Path, host_id: str, secret: str) -> Path:
    """Leave ``secret`` in ``secrets_dir/<host_id>`` (0600) for the operator to hand to the
    agent, replacing a stale copy; the scheduler never reads it back (the database holds the
    secret; old files are imported once, :mod:`scheduler.agent_secrets`)."""
    if not valid_host_id(host_id):
        raise ValueError(host_id_error(host_id))
    path = Path(secrets_dir) / host_id
    if _create_exclusive(path, secret):
        return path
    if read_secret(path).decode() != secret:
        staged = path.with_name(f".{host_id}.new")
        staged.unlink(missing_ok=True)
        _create_exclusive(staged, secret)
        os.replace(staged, path)
    return path


def host_id_error(host_id: str) -> str:
    return f"host id {host_id!r} must be letters, digits, '.', '_' or '-' (at most 63)"
