"""A notebook's SSH keys: the checks of a request's keys, how they are stored, what the API
shows of them (fingerprints, never keys) and its ``ssh://`` address.

Full keys leave the scheduler only inside ``Assignment.ssh_public_keys`` (agent protocol), to
the host running the notebook and only while it is to run. A host offers SSH when its agent
registered an ``ssh_address``; the address a user sees is that host's, while the notebook is
RUNNING there with keys.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from common import wire
from common.errors import invalid
from common.ssh import SshKeyError, parse_public_key, ssh_url
from common.states import NotebookState
from scheduler.db import Row, Tx


def checked_keys(keys: Sequence[str], field: str) -> list[str]:
    """The keys of a request (shape already checked by :data:`wire.SshPublicKey`), each
    decoded and checked whole, as normalized lines; a key given twice is kept once. A bad key
    is a 400 naming it (``{field}[i]``)."""
    lines: list[str] = []
    seen: set[bytes] = set()
    for i, text in enumerate(keys):
        try:
            key = parse_public_key(text)
        except SshKeyError as exc:
            where = f"{field}[{i}]"
            raise invalid(
                f"invalid request: not a usable SSH public key: {exc} - at `{where}`", field=where
            )
        if key.blob not in seen:
            seen.add(key.blob)
            lines.append(key.line)
    return lines


def encode_keys(lines: Sequence[str]) -> str:
    """The stored form (``notebooks.ssh_public_keys``)."""
    return json.dumps(list(lines))


def stored_keys(row: Row) -> list[str]:
    raw = row["ssh_public_keys"]
    return json.loads(raw) if raw and raw != "[]" else []


def key_infos(row: Row) -> list[wire.SshKeyInfo]:
    infos = []
    for line in stored_keys(row):
        key = parse_public_key(line)  # stored only after the same check
        infos.append(
            wire.SshKeyInfo(type=key.type, fingerprint=key.fingerprint, comment=key.comment)
        )
    return infos


def assigned_keys(row: Row) -> list[str]:
    """What the agent gets: the keys while the notebook is to run, else none (a stopping or
    deleting notebook takes no logins)."""
    return stored_keys(row) if row["desired"] == "running" else []


async def ssh_address(tx: Tx, row: Row) -> str | None:
    """``ssh://<id>@host:port`` while RUNNING, with keys, on a host that offers SSH."""
    if row["state"] != NotebookState.RUNNING or row["host_id"] is None:
        return None
    if not stored_keys(row):
        return None
    host = await tx.one("SELECT ssh_address FROM hosts WHERE id = ?", (row["host_id"],))
    if host is None or not host["ssh_address"]:
        return None
    return ssh_url(row["id"], host["ssh_address"])
