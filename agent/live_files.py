"""Files of a volume a RUNNING notebook is using, read and written by the root agent
(datasync, :mod:`agent.datasync_transfer`). Everything :mod:`agent.userfs` says holds here: the
user can swap any path for a link or a FIFO between two system calls, so paths are resolved
one component at a time from directory descriptors, ``O_NOFOLLOW``, and nothing is followed.
What is new here is that a process in the container may be writing the very files we read or
replace:

* :func:`read_whole` and :func:`upload_large` hand over a version of a file only when it is
  whole: size, mtime and ctime unchanged across the read and, for a file modified within the
  last :data:`RACY_NS` (a write may be under way without having moved its mtime yet), a second
  read giving the same bytes. Otherwise the file is read again, at most
  :data:`agent.userfs.READ_RETRIES` more times, then given up as unstable. A large file goes up
  as a multipart upload that is completed only after those checks (else aborted): no torn
  object is ever visible in the bucket.
* :func:`place_new` puts a downloaded file in place with ``link`` (fails if anything is there:
  never replaces what the user made meanwhile); :func:`place_over` swaps it with the pulled
  file it updates in one ``renameat2(RENAME_EXCHANGE)`` and swaps back when what it took out is
  no longer the version that was pulled (the user changed it in between).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import hashlib
import os
import platform
import stat
import time
from collections.abc import Awaitable, Callable

from agent import userfs
from agent.workspace.scan import RACY_NS

#: At most this much of a file is read into memory at once: smaller files go up in one PUT,
#: larger ones in parts of (at least) this size.
PART_SIZE = 8 << 20
#: S3 allows 10,000 parts; parts grow past PART_SIZE for files above ~80 GB.
MAX_PARTS = 9_000

RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "arm64": 276}.get(platform.machine())


def recently_changed(st: os.stat_result, now_ns: int | None = None) -> bool:
    """Whether a write may still be landing without having moved its mtime yet (it moves in
    timestamp ticks, and a write updates it before it copies its bytes)."""
    now = time.time_ns() if now_ns is None else now_ns
    return now - st.st_mtime_ns < RACY_NS


# ------------------------------------------------------------------ reading


def open_for_read(root: str, rel: str, owner: tuple[int, int] | None) -> tuple[int, os.stat_result]:
    """Open ``rel`` below ``root`` as the regular file it is now (a file renamed over the one
    the scan saw is a newer version, and fine), with the filesystem credentials of ``owner``.
    Raises :class:`agent.userfs.Skipped` for a link, a FIFO, a directory, a vanished path."""
    uid, gid = owner if owner is not None else (None, None)
    root_fd = userfs.open_root(root)
    try:
        with userfs.as_user(uid, gid), userfs.DirFds(root_fd, owner=uid) as dirs:
            return userfs.open_regular(dirs, rel)
    finally:
        os.close(root_fd)


def read_whole(fd: int) -> tuple[bytes, os.stat_result] | None:
    """A whole version of the open file and its ``fstat``, or ``None`` when every try saw it
    change (see the module docstring). For files up to :data:`PART_SIZE` or so: all in memory."""
    for _ in range(userfs.READ_RETRIES + 1):
        before = os.fstat(fd)
        data = userfs.read_all(fd, before.st_size)
        after = os.fstat(fd)
        if not userfs.same_version(before, after) or len(data) != after.st_size:
            continue
        if recently_changed(after):
            again = userfs.read_all(fd, after.st_size)
            if again != data or not userfs.same_version(after, os.fstat(fd)):
                continue
        return data, after
    return None


def part_size_for(size: int) -> int:
    """Parts of :data:`PART_SIZE`, whole MiB larger when the file would need too many."""
    needed = -(-size // MAX_PARTS)
    return max(PART_SIZE, -(-needed // (1 << 20)) * (1 << 20))


def _pread_full(fd: int, length: int, offset: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < length:
        piece = os.pread(fd, length - got, offset + got)
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def _digests_match(fd: int, size: int, part: int, digests: dict[int, bytes]) -> bool:
    for offset in range(0, size, part):
        data = _pread_full(fd, min(part, size - offset), offset)
        if hashlib.blake2b(data).digest() != digests.get(offset):
            return False
    return True


#: ``put_parts`` of :class:`agent.objectstore.S3ObjectStore`.
PutParts = Callable[
    [int, int, Callable[[int, int], Awaitable[bytes]], Callable[[], Awaitable[bool]]],
    Awaitable[str | None],
]


async def upload_large(fd: int, put_parts: PutParts) -> tuple[str, os.stat_result] | None:
    """Upload the open file with ``put_parts(size, part_size, read_part, commit)``, committed
    only when the whole upload read one version (see the module docstring); ``(etag, fstat of
    that version)``, or ``None`` when every try saw the file change (every upload aborted)."""
    for _ in range(userfs.READ_RETRIES + 1):
        done = await _upload_once(fd, put_parts)
        if done is not None:
            return done
    return None


async def _upload_once(fd: int, put_parts: PutParts) -> tuple[str, os.stat_result] | None:
    before = await asyncio.to_thread(os.fstat, fd)
    size = before.st_size
    if size == 0:
        return None  # emptied since it was opened: changing
    part = part_size_for(size)
    digests: dict[int, bytes] = {}
    version: list[os.stat_result] = []

    async def read_part(offset: int, length: int) -> bytes:
        data = await asyncio.to_thread(_pread_full, fd, length, offset)
        digests[offset] = hashlib.blake2b(data).digest()
        return data

    async def commit() -> bool:
        after = await asyncio.to_thread(os.fstat, fd)
        if not userfs.same_version(before, after):
            return False
        if recently_changed(after):
            same = await asyncio.to_thread(_digests_match, fd, size, part, digests)
            last = await asyncio.to_thread(os.fstat, fd)
            if not same or not userfs.same_version(after, last):
                return False
        version.append(after)
        return True

    etag = await put_parts(size, part, read_part, commit)
    if etag is None or not version:
        return None
    return etag, version[0]


# ------------------------------------------------------------------ what is there


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def gone(root_fd: int, rel: str) -> str | None:
    """``None`` when nothing is at ``rel`` any more (it or a parent directory is absent);
    otherwise what is there, for the note saying why its object was not deleted."""
    parts = rel.split("/")
    fd = root_fd
    opened: list[int] = []
    try:
        for i, name in enumerate(parts[:-1]):
            try:
                fd = os.open(name, userfs.DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                return None
            except OSError:
                return f"{'/'.join(parts[: i + 1])} is no longer a directory"
            opened.append(fd)
        st = lstat_at(fd, parts[-1])
        if st is None:
            return None
        return "it is there again" if stat.S_ISREG(st.st_mode) else "something else is there"
    finally:
        for each in opened:
            os.close(each)


def ensure_dirs(dirs: userfs.DirFds, rel_dir: str, owner: tuple[int, int]) -> int:
    """The descriptor of directory ``rel_dir`` below the root, made (``mkdir -p``, each new
    one given to ``owner``) where missing; never through a link. Raises
    :class:`agent.userfs.Skipped` when a component is a link or not a directory."""
    done = ""
    for part in [p for p in rel_dir.split("/") if p]:
        parent = dirs.dir_fd(done)
        try:
            os.mkdir(part, 0o755, dir_fd=parent)
        except FileExistsError:
            pass
        else:
            # The link itself if the user swapped one in since: never what it points to.
            os.chown(part, *owner, dir_fd=parent, follow_symlinks=False)
        done = f"{done}/{part}" if done else part
    return dirs.dir_fd(done)


# ------------------------------------------------------------------ putting files in place


def _renameat2(old_dir: int, old: str, new_dir: int, new: str, flags: int) -> None:
    fn = getattr(_libc, "renameat2", None)
    if fn is not None:
        result = fn(old_dir, os.fsencode(old), new_dir, os.fsencode(new), flags)
    elif _SYS_RENAMEAT2 is not None:
        result = _libc.syscall(
            _SYS_RENAMEAT2, old_dir, os.fsencode(old), new_dir, os.fsencode(new), flags
        )
    else:
        raise OSError(errno.ENOSYS, f"no renameat2 on {platform.machine()}")
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def place_new(staging_fd: int, temp: str, parent_fd: int, name: str) -> bool:
    """Link the downloaded ``temp`` in as ``name``; ``False`` when something is there now."""
    try:
        os.link(temp, name, src_dir_fd=staging_fd, dst_dir_fd=parent_fd, follow_symlinks=False)
    except FileExistsError:
        return False
    return True


def place_over(
    staging_fd: int, temp: str, parent_fd: int, name: str, pulled: tuple[int, int]
) -> bool:
    """Swap the downloaded ``temp`` with ``name`` when ``name`` is still the regular file of
    ``(size, mtime_ns)`` ``pulled``; ``False`` (nothing changed) otherwise. Either way
    ``temp`` then holds what is not in place (deleted by the caller). Processes holding the old
    file open keep it; an open for ``name`` after the swap gets the new version."""
    _renameat2(staging_fd, temp, parent_fd, name, RENAME_EXCHANGE)
    took_out = lstat_at(staging_fd, temp)
    if (
        took_out is not None
        and stat.S_ISREG(took_out.st_mode)
        and (took_out.st_size, took_out.st_mtime_ns) == pulled
    ):
        return True
    # The user changed it between our look and the swap: theirs goes back.
    _renameat2(staging_fd, temp, parent_fd, name, RENAME_EXCHANGE)
    return False
