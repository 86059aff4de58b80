"""A volume as people write it: ``container@alias[/prefix]:/mount/path[:ro|rw|rwd]`` (the CLI's
``--volume``, the console's run form). :func:`parse_volume` checks each part against the API's
own constraints, so a mistake is reported naming the part before any request."""

from __future__ import annotations

import msgspec

from common import wire

FORMAT = "container@alias[/prefix]:/mount/path[:ro|rw|rwd]"
PERMISSIONS = ("ro", "rw", "rwd")

#: wire.Volume field → what the user calls that part.
_PARTS = {
    "container": "container (bucket name)",
    "alias": "datastore alias",
    "prefix": "prefix",
    "mount_path": "mount path",
    "permission": "permission",
}


class VolumeSyntaxError(ValueError):
    pass


def parse_volume(text: str) -> wire.Volume:
    """``container@alias[/prefix]:/mount/path[:ro|rw|rwd]`` → ``wire.Volume`` (default
    ``ro``). Raises :class:`VolumeSyntaxError` naming the bad part."""

    def bad(what: str) -> VolumeSyntaxError:
        return VolumeSyntaxError(f"--volume {text!r}: {what} (expected {FORMAT})")

    container, at, rest = text.partition("@")
    if not at:
        raise bad("missing '@' between the container and the datastore alias")
    # The mount path holds no ':', so the last ':/' separates the source from it.
    source, sep, target = rest.rpartition(":/")
    if not sep:
        raise bad("missing ':/mount/path' after the datastore alias")
    target = "/" + target
    permission = "ro"
    if ":" in target:
        target, _, permission = target.partition(":")
        if permission not in PERMISSIONS:
            raise bad(f"permission {permission!r} is not one of {', '.join(PERMISSIONS)}")
    alias, _, prefix = source.partition("/")
    if not container:
        raise bad("the container (bucket name) is empty")
    if not alias:
        raise bad("the datastore alias is empty")
    raw = {
        "container": container,
        "alias": alias,
        "prefix": prefix,
        "mount_path": target,
        "permission": permission,
    }
    try:
        return msgspec.convert(raw, wire.Volume)
    except msgspec.ValidationError as exc:
        message = str(exc)
        for field, part in _PARTS.items():
            if f"`$.{field}`" in message:
                raise bad(f"invalid {part} {raw[field]!r}")
        raise bad(message)


def format_volume(volume: wire.Volume) -> str:
    source = f"{volume.container}@{volume.alias}"
    if volume.prefix:
        source += "/" + volume.prefix
    return f"{source}:{volume.mount_path}:{volume.permission}"
