"""OpenSSH public keys as nbfleet takes them, their fingerprints, and a notebook's SSH address.

Both sides use this: the scheduler checks every key a request brings (after
:data:`common.wire.SshPublicKey` checked its shape) and shows fingerprints, never keys; the CLI
reads keys from files or arguments and checks them before sending anything, and reads the
``ssh://`` address back.

A key is one line, ``<type> <base64 blob> [comment]``. Its blob is the key in SSH wire format
(RFC 4253 section 6.6): length-prefixed strings, the first of which is the type again. It is
parsed whole, so a truncated paste, a blob of another type or trailing garbage is refused here
rather than by the agent's SSH server at login. The fingerprint is OpenSSH's
(``ssh-keygen -l``): ``SHA256:`` and the unpadded base64 of the SHA-256 of the blob.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass
from urllib.parse import urlsplit

#: What each accepted key type's blob holds after its type string: ``curve`` is the curve name
#: (which must match the type), ``ed25519`` the 32-byte key, ``point`` an uncompressed EC
#: point, ``mpint`` an RSA number, ``app`` a security key's application string.
KEY_LAYOUTS: dict[str, tuple[str, ...]] = {
    "ssh-ed25519": ("ed25519",),
    "ecdsa-sha2-nistp256": ("curve", "point"),
    "ecdsa-sha2-nistp384": ("curve", "point"),
    "ecdsa-sha2-nistp521": ("curve", "point"),
    "ssh-rsa": ("mpint", "mpint"),
    "sk-ssh-ed25519@openssh.com": ("ed25519", "app"),
    "sk-ecdsa-sha2-nistp256@openssh.com": ("curve", "point", "app"),
}
KEY_TYPES = tuple(KEY_LAYOUTS)

#: Longest key line: a 16384-bit RSA key (OpenSSH's largest) with a long comment fits.
MAX_KEY_LENGTH = 4096
#: Keys one notebook may have.
MAX_KEYS = 20
#: OpenSSH refuses shorter RSA moduli (``SSH_RSA_MINIMUM_MODULUS_SIZE``).
MIN_RSA_BITS = 1024

#: The shape of a key line, for :data:`common.wire.SshPublicKey`: a known type, one space,
#: base64, and optionally a space and a comment without control characters (no NUL, no newline:
#: each key is one line of the agent's list).
KEY_PATTERN = (
    r"^(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,2}( [^\x00-\x1f\x7f]*)?\Z"
)

#: Bytes of an uncompressed point (0x04, x, y) per curve.
_POINT_BYTES = {"nistp256": 65, "nistp384": 97, "nistp521": 133}

_PRIVATE_MARKERS = ("-----BEGIN", "PuTTY-User-Key-File")


class SshKeyError(ValueError):
    """Not a public key nbfleet accepts; the message says why, for people."""


@dataclass(frozen=True)
class PublicKey:
    type: str
    blob: bytes
    comment: str = ""

    @property
    def line(self) -> str:
        """The key as one normalized line (single spaces, comment stripped)."""
        text = f"{self.type} {base64.b64encode(self.blob).decode()}"
        return f"{text} {self.comment}" if self.comment else text

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a key blob (what ``ssh-keygen -l`` prints)."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode()
    return "SHA256:" + digest.rstrip("=")


def looks_like_key(text: str) -> bool:
    """Whether ``text`` starts like a public key line (a known type and a space), as opposed to,
    say, a file name."""
    first = text.strip().split(maxsplit=1)
    return bool(first) and first[0] in KEY_LAYOUTS


def parse_public_key(text: str) -> PublicKey:
    """One key line (blanks around it and between its fields do not matter); raise
    :class:`SshKeyError`."""
    if any(marker in text for marker in _PRIVATE_MARKERS):
        raise SshKeyError("this is a private key; give the public one (the .pub file)")
    text = text.strip()
    if len(text) > MAX_KEY_LENGTH:
        raise SshKeyError(f"longer than {MAX_KEY_LENGTH} characters")
    if any(c in text for c in "\x00\r\n"):
        raise SshKeyError("a key is one line, without NUL or line breaks")
    parts = text.split(maxsplit=2)
    if not parts:
        raise SshKeyError("empty")
    key_type = parts[0]
    if key_type not in KEY_LAYOUTS:
        raise SshKeyError(
            f"key type {key_type[:40]!r} is not one of {', '.join(KEY_TYPES)} (a line of an "
            "authorized_keys file with options is not a public key line)"
        )
    if len(parts) < 2:
        raise SshKeyError(f"{key_type} key without its base64 part")
    comment = parts[2].strip() if len(parts) == 3 else ""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in comment):
        raise SshKeyError("the comment holds control characters")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise SshKeyError(f"the {key_type} key's base64 part does not decode")
    check_blob(key_type, blob)
    return PublicKey(key_type, blob, comment)


def check_blob(key_type: str, blob: bytes) -> None:
    """The blob holds a ``key_type`` key and nothing else; raise :class:`SshKeyError`."""
    fields = _strings(blob, key_type)
    embedded = fields[0].decode(errors="replace")
    if embedded != key_type:
        raise SshKeyError(f"the line says {key_type} but the key inside is {embedded[:40]!r}")
    layout = KEY_LAYOUTS[key_type]
    if len(fields) - 1 != len(layout):
        raise SshKeyError(f"the {key_type} key is truncated or has extra data")
    curve = ""
    for kind, value in zip(layout, fields[1:], strict=True):
        if kind == "ed25519" and len(value) != 32:
            raise SshKeyError(f"the {key_type} key is {len(value)} bytes, not 32")
        if kind == "curve":
            curve = value.decode(errors="replace")
            if not key_type.split("@")[0].endswith(curve):
                raise SshKeyError(f"the {key_type} key is on curve {curve[:20]!r}")
        if kind == "point" and (len(value) != _POINT_BYTES.get(curve) or value[:1] != b"\x04"):
            raise SshKeyError(f"the {key_type} key's point is not a {curve} point")
    if key_type == "ssh-rsa":
        bits = int.from_bytes(fields[2], "big").bit_length()
        if bits < MIN_RSA_BITS:
            raise SshKeyError(f"the RSA key has {bits} bits; at least {MIN_RSA_BITS} are needed")


def _strings(blob: bytes, key_type: str) -> list[bytes]:
    """The length-prefixed strings the blob is made of."""
    fields, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            raise SshKeyError(f"the {key_type} key is truncated")
        (size,) = struct.unpack_from(">I", blob, at)
        at += 4
        if at + size > len(blob):
            raise SshKeyError(f"the {key_type} key is truncated")
        fields.append(blob[at : at + size])
        at += size
    if not fields:
        raise SshKeyError(f"the {key_type} key is empty")
    return fields


# ---------------------------------------------------------------- a notebook's address


def ssh_url(notebook: str, address: str) -> str:
    """``ssh://<notebook>@<host>:<port>`` from a host's ``ssh_address`` (``host:port``)."""
    return f"ssh://{notebook}@{address}"


@dataclass(frozen=True)
class SshAddress:
    user: str
    host: str
    port: int


def parse_ssh_url(url: str) -> SshAddress:
    """The parts of an address made by :func:`ssh_url`; ``ValueError`` for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.username or not parts.hostname or not parts.port:
        raise ValueError(f"not an ssh://USER@HOST:PORT address: {url!r}")
    return SshAddress(parts.username, parts.hostname, parts.port)
