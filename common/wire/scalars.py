"""Constrained scalars shared by the request and reply bodies: label, name, environment,
command, host and key formats, each with the pattern that refuses bad input at the door."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from common import ssh

#: Label keys and values follow Kubernetes' rules closely enough for selectors to be unambiguous.
LabelKey = Annotated[str, Meta(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?\Z")]
LabelValue = Annotated[str, Meta(pattern=r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?\Z")]
#: ``\Z``, not ``$`` (which also matches before a final newline). A NUL byte cannot be passed
#: to a process (environment or argument), so it is refused at the door, naming the field.
EnvName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")]
EnvValue = Annotated[str, Meta(max_length=4096, pattern=r"^[^\x00]*\Z")]
#: One argument of a command run in a container.
Argument = Annotated[str, Meta(pattern=r"^[^\x00]*\Z")]
Name = Annotated[str, Meta(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")]
CatalogKey = Annotated[str, Meta(min_length=1, max_length=64)]
HostId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,62})\Z")]
#: A request for more than this is a typo, not a wish; per-project quotas sit well below.
GpuCount = Annotated[int, Meta(ge=0, le=16)]
CpuCount = Annotated[int, Meta(ge=0, le=256)]
Role = Literal["read", "operator"]
#: Idle timeouts (seconds): at least 10 (a shorter one would stop a busy notebook before its
#: agent's next look at it), at most a year.
MIN_IDLE_TIMEOUT_S = 10.0
MAX_IDLE_TIMEOUT_S = 365 * 86400.0
IdleTimeout = Annotated[float, Meta(ge=MIN_IDLE_TIMEOUT_S, le=MAX_IDLE_TIMEOUT_S)]
#: One OpenSSH public key line, ``<type> <base64> [comment]`` (see :mod:`common.ssh`). The
#: pattern checks its shape; the scheduler also decodes the base64 and checks the key inside
#: (:func:`common.ssh.parse_public_key`), naming the same field.
SshPublicKey = Annotated[str, Meta(max_length=ssh.MAX_KEY_LENGTH, pattern=ssh.KEY_PATTERN)]
SshPublicKeys = Annotated[list[SshPublicKey], Meta(max_length=ssh.MAX_KEYS)]
_HOST = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9._-]{0,252}[A-Za-z0-9])?)"
_PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
#: ``host:port`` (a name, an IPv4 address or a bracketed IPv6 one, ``[fd00::7]:22``, and a
#: port 1-65535), or "" for none.
HostPort = Annotated[str, Meta(max_length=262, pattern=rf"^({_HOST}:{_PORT})?\Z")]
Desired = Literal["running", "stopped", "deleted"]
