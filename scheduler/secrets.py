"""Secret files on disk: the admin token and the per-agent HMAC secrets.

Both are created with mode 0600 and never overwritten, so ``add-host`` and ``admin-token`` can
be run again safely and print the existing value.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from common.auth import new_token, read_secret

log = logging.getLogger(__name__)

HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def valid_host_id(host_id: str) -> bool:
    """Host ids name files in ``agent_secrets_dir``; this keeps them inside it."""
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


def ensure_agent_secret(secrets_dir: str | Path, host_id: str) -> str:
    """The HMAC secret for ``host_id`` (32 random bytes as hex), created (0600) if absent."""
    if not valid_host_id(host_id):
        raise ValueError(
            f"host id {host_id!r} must be letters, digits, '.', '_' or '-' (at most 63)"
        )
    path = Path(secrets_dir) / host_id
    if _create_exclusive(path, secrets.token_hex(32)):
        log.info("host=%s secret created in %s", host_id, path)
    return read_secret(path).decode()


class AgentSecrets:
    """``secret_for(host_id)`` for :class:`common.auth.Verifier`, reading
    ``agent_secrets_dir/<host>`` with a short cache so a new ``add-host`` takes effect without a
    restart and a removed secret stops working within ``ttl_s``. Unknown hosts are not cached."""

    def __init__(
        self,
        secrets_dir: str | Path,
        *,
        ttl_s: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dir = Path(secrets_dir)
        self.ttl_s = ttl_s
        self._monotonic = monotonic
        self._cache: dict[str, tuple[bytes, float]] = {}

    def __call__(self, host_id: str) -> bytes | None:
        if not valid_host_id(host_id):
            return None
        now = self._monotonic()
        cached = self._cache.get(host_id)
        if cached is not None and now - cached[1] < self.ttl_s:
            return cached[0]
        try:
            secret = read_secret(self.dir / host_id)
        except (OSError, ValueError) as exc:
            self._cache.pop(host_id, None)
            if not isinstance(exc, FileNotFoundError):
                log.warning(
                    "host=%s cannot read its secret (%s); its requests get 401", host_id, exc
                )
            return None
        self._cache[host_id] = (secret, now)
        return secret
