"""OpenSSH public keys for tests: made up in SSH wire format (fast, deterministic, enough for
everything but a login), or made by the real ``ssh-keygen`` (for fingerprints and logins).

API:

``blob(*fields: bytes) -> bytes``
    Length-prefixed strings, as a key blob is made (RFC 4253 section 6.6).

``ed25519_line(seed: str, comment: str = "") -> str``
    A well-formed ``ssh-ed25519`` key line whose 32 key bytes derive from ``seed``.

``keygen(directory: Path, name: str, key_type: str = "ed25519", *, bits: int | None = None,
comment: str = "") -> Path``
    Runs ``ssh-keygen -t key_type`` (no passphrase) into ``directory/name`` and returns the
    ``.pub`` file; the test fails when ``ssh-keygen`` is missing (``scripts/test`` installs
    ``openssh-client``).

``keygen_fingerprint(public_key_file: Path) -> tuple[int, str, str, str]``
    ``ssh-keygen -lf``: bits, fingerprint, comment ("" for none), type in capitals
    (``ED25519``, ``ECDSA-SK``).
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import struct
import subprocess
from pathlib import Path

import pytest


def blob(*fields: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


def ed25519_line(seed: str, comment: str = "") -> str:
    raw = blob(b"ssh-ed25519", hashlib.sha256(seed.encode()).digest())
    line = f"ssh-ed25519 {base64.b64encode(raw).decode()}"
    return f"{line} {comment}" if comment else line


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if found is None:
        pytest.fail("ssh-keygen is missing (scripts/test installs openssh-client)", pytrace=False)
    return found


def keygen(
    directory: Path,
    name: str,
    key_type: str = "ed25519",
    *,
    bits: int | None = None,
    comment: str = "",
) -> Path:
    private = directory / name
    argv = [_ssh_keygen(), "-q", "-t", key_type, "-N", "", "-C", comment, "-f", str(private)]
    if bits is not None:
        argv += ["-b", str(bits)]
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, timeout=60)
    return private.with_name(name + ".pub")


def keygen_fingerprint(public_key_file: Path) -> tuple[int, str, str, str]:
    out = subprocess.run(
        [_ssh_keygen(), "-l", "-E", "sha256", "-f", str(public_key_file)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    # "256 SHA256:abc... comment words (ED25519)"; "no comment" stands for none.
    bits, fingerprint, rest = out.split(" ", 2)
    comment, _, key_type = rest.rpartition(" ")
    return int(bits), fingerprint, "" if comment == "no comment" else comment, key_type[1:-1]
