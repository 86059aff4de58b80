"""Files under directories a notebook's user controls, read and written by the root agent.

Inside the container the user owns everything under ``/workspace``, ``/data`` and a writable
volume's mount, and can replace any file or directory there, between two of the agent's system
calls, with a symlink (to ``/etc/shadow``, the agent's secret, another notebook's workspace) or a
FIFO. So nothing here ever takes a path whole:

* A relative path is resolved one component at a time from a directory file descriptor, each
  directory opened ``O_DIRECTORY | O_NOFOLLOW`` relative to its parent (:class:`DirFds`), so a
  symlink anywhere in the path fails the open instead of being followed.
* A file is opened ``O_NOFOLLOW | O_NONBLOCK`` relative to its parent's descriptor (a FIFO
  swapped in cannot block the open), then checked with ``fstat`` to be a regular file, and the
  very inode the scan saw (:func:`open_regular`). Anything else raises :class:`Skipped` with the
  reason, and is never read. The user cannot create device nodes (the container has no
  ``CAP_MKNOD``), so the open itself has no side effects.
* Reads run with the notebook user's filesystem credentials when the caller gives them
  (:func:`as_user`: per-thread ``setfsuid``/``setfsgid`` and the thread's own supplementary
  groups), so even a future bug in the checks above can read only what the user could read
  anyway. A file the user made unreadable to themselves (mode 000) is still theirs: it is opened
  as root only after the check that its owner, from ``fstat`` on the opened descriptor, is the
  user.
* :func:`read_stable` reads a file's bytes and checks that its size, mtime and ctime did not
  move during the read; a file being written is read again, a bounded number of times.

A descriptor's directory can be moved by the user, but only within the same bind mount (a
rename across mounts fails with ``EXDEV``), so everything reachable from the root descriptor
without following a link is the user's own tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
#: A file whose size, mtime or ctime moved while it was read is read again this many times.
READ_RETRIES = 3


class Skipped(Exception):
    """A path that is not (or is no longer) what the scan saw; the message says what it is."""


def open_root(path: str) -> int:
    """The root directory itself: the agent's own host dir, so a link there is refused too."""
    return os.open(path, DIR_FLAGS)


class DirFds:
    """Descriptors of directories below one root, each opened relative to its parent with
    ``O_NOFOLLOW``; the ``keep`` most recently used stay open, so files of one directory (the
    usual order of a scan) cost one ``openat`` each. Not thread-safe: one per thread.

    The root descriptor is borrowed, never closed here."""

    def __init__(self, root_fd: int, *, keep: int = 64, owner: int | None = None) -> None:
        self.root_fd = root_fd
        self.keep = keep
        self.owner = owner
        self._open: OrderedDict[str, int] = OrderedDict()

    def dir_fd(self, rel_dir: str) -> int:
        """The descriptor of directory ``rel_dir`` (``""`` is the root). Raises
        :class:`Skipped` when a component is not a directory (a symlink, a file) or is gone."""
        if not rel_dir:
            return self.root_fd
        cached = self._open.get(rel_dir)
        if cached is not None:
            self._open.move_to_end(rel_dir)
            return cached
        # The nearest open ancestor, then one component at a time (no recursion: a user can
        # nest directories deeper than Python's stack).
        parts = rel_dir.split("/")
        start, fd = 0, self.root_fd
        for i in range(len(parts) - 1, 0, -1):
            ancestor = self._open.get("/".join(parts[:i]))
            if ancestor is not None:
                start, fd = i, ancestor
                break
        for i in range(start, len(parts)):
            name = parts[i]
            try:
                fd = _open_at(fd, name, DIR_FLAGS, self.owner)
            except OSError as exc:
                why = _why(exc)
                if exc.errno in (errno.ENOTDIR, errno.ELOOP) and _is_link(fd, name):
                    why = "is a symlink, not followed"
                raise Skipped(f"directory {'/'.join(parts[: i + 1])!r}: {why}") from None
            self._open["/".join(parts[: i + 1])] = fd
            # As we go (a deep path must not hold a descriptor per level): the one just opened,
            # which the next level is opened from, is the most recent and stays.
            while len(self._open) > max(1, self.keep):
                os.close(self._open.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()

    def __enter__(self) -> DirFds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _why(exc: OSError) -> str:
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return "is a symlink, not followed"
    if exc.errno == errno.ENOTDIR:
        return "is not a directory"
    if exc.errno == errno.ENOENT:
        return "vanished"
    if exc.errno == errno.EACCES:
        return "is not readable by the notebook's user"
    return exc.strerror or str(exc)


def _open_at(dir_fd: int, name: str, flags: int, owner: int | None) -> int:
    """``openat`` with the calling thread's credentials; with ``owner`` set (we run as that
    user, see :func:`as_user`) a permission refusal is retried as root and kept only when the
    opened inode belongs to ``owner``: the user's own file or directory, which they could
    ``chmod`` and read themselves."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except PermissionError:
        if owner is None or not _credentials.switched:
            raise
    with _as_root():
        fd = os.open(name, flags, dir_fd=dir_fd)
    if os.fstat(fd).st_uid != owner:
        os.close(fd)
        raise PermissionError(errno.EACCES, "not the notebook user's own")
    return fd


def split(rel: str) -> tuple[str, str]:
    parent, _, name = rel.rpartition("/")
    return parent, name


def open_regular(
    dirs: DirFds, rel: str, expect: tuple[int, int] | None = None
) -> tuple[int, os.stat_result]:
    """Open ``rel`` for reading as the regular file the scan saw (``expect`` = (device, inode))
    and return ``(fd, fstat)``. Raises :class:`Skipped` for anything else: a symlink, a FIFO,
    a socket, a directory, a file replaced since the scan, or a path that vanished."""
    parent_rel, name = split(rel)
    parent = dirs.dir_fd(parent_rel)
    try:
        fd = _open_at(parent, name, FILE_FLAGS, dirs.owner)
    except OSError as exc:
        raise Skipped(f"{rel!r} {_why(exc)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Skipped(f"{rel!r} is not a regular file (mode {stat.filemode(st.st_mode)})")
        if expect is not None and (st.st_dev, st.st_ino) != expect:
            raise Skipped(f"{rel!r} was replaced since the scan")
        # O_NONBLOCK only mattered for the open: it has no effect on reads of a regular file.
    except BaseException:
        os.close(fd)
        raise
    return fd, st


# ------------------------------------------------------------------ consistent reads


@dataclass(slots=True)
class Read:
    """What one read of a file got: ``data`` is every byte read (its length is the real size),
    ``st`` the ``fstat`` after the read, ``stable`` whether size, mtime and ctime held still."""

    data: bytes
    st: os.stat_result
    stable: bool
    attempts: int


def same_version(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (b.st_size, b.st_mtime_ns, b.st_ctime_ns)


def read_all(fd: int, size: int) -> bytes:
    """Up to ``size`` bytes from offset 0, fewer when the file is shorter now."""
    parts: list[bytes] = []
    offset = 0
    while offset < size:
        piece = os.pread(fd, min(size - offset, 8 << 20), offset)
        if not piece:
            break
        parts.append(piece)
        offset += len(piece)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_stable(fd: int, before: os.stat_result, retries: int = READ_RETRIES) -> Read:
    """Read the whole file; read again while its size, mtime or ctime changed during the read
    (at most ``retries`` more times). The last complete read is returned either way, with
    ``stable`` saying which: never bytes that were not read."""
    attempts = 0
    while True:
        attempts += 1
        data = read_all(fd, before.st_size)
        after = os.fstat(fd)
        if same_version(before, after) and len(data) == after.st_size:
            return Read(data, after, True, attempts)
        if attempts > retries:
            return Read(data, after, False, attempts)
        before = after


def is_hole(fd: int, offset: int, length: int) -> bool:
    """Whether ``[offset, offset + length)`` holds no data (a hole of a sparse file), by
    ``SEEK_DATA``; a file system without it reports data everywhere."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA) >= offset + length
    except OSError as exc:
        return exc.errno == errno.ENXIO  # no data at or after offset


# ------------------------------------------------------------------ credentials


class _Credentials(threading.local):
    switched = False
    uid = 0
    gid = 0
    groups: list[int] = []


_credentials = _Credentials()
_libc = ctypes.CDLL(None, use_errno=True)
# glibc's setgroups() changes every thread of the process (it is one of the "set*id" calls it
# broadcasts); the raw system call changes only the calling thread, like setfsuid/setfsgid.
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159, "arm64": 159}.get(platform.machine())


def _set_thread_groups(groups: list[int]) -> None:
    if _SYS_SETGROUPS is None:
        raise OSError(errno.ENOSYS, f"no setgroups syscall number for {platform.machine()}")
    array = (ctypes.c_uint * max(1, len(groups)))(*groups)
    if _libc.syscall(_SYS_SETGROUPS, len(groups), array) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _set_fs_ids(uid: int, gid: int) -> None:
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    # Both return the previous id and report no error: read the current ones back.
    if _libc.setfsuid(-1) != uid or _libc.setfsgid(-1) != gid:
        raise PermissionError(errno.EPERM, f"could not take filesystem ids {uid}:{gid}")


@contextlib.contextmanager
def as_user(uid: int | None, gid: int | None) -> Iterator[None]:
    """Run the body, in this thread only, with filesystem uid/gid ``uid:gid`` and no other
    groups: the kernel then checks every open against the notebook user's permissions (and
    drops root's ``CAP_DAC_*`` for this thread). A no-op when ``uid`` is ``None`` or the agent
    is not root (it then reads with its own rights anyway)."""
    if uid is None or os.geteuid() != 0 or _credentials.switched:
        yield
        return
    groups = os.getgroups()
    _set_thread_groups([gid if gid is not None else uid])
    try:
        _set_fs_ids(uid, gid if gid is not None else uid)
    except BaseException:
        _set_thread_groups(groups)
        raise
    _credentials.switched, _credentials.uid = True, uid
    _credentials.gid, _credentials.groups = gid if gid is not None else uid, groups
    try:
        yield
    finally:
        _set_fs_ids(0, 0)
        _set_thread_groups(groups)
        _credentials.switched = False


@contextlib.contextmanager
def _as_root() -> Iterator[None]:
    """Root's filesystem credentials for one call inside :func:`as_user`."""
    uid, gid = _credentials.uid, _credentials.gid
    _set_thread_groups(_credentials.groups)
    _set_fs_ids(0, 0)
    try:
        yield
    finally:
        _set_thread_groups([gid])
        _set_fs_ids(uid, gid)


# ------------------------------------------------------------------ writing


def create_file(dirs: DirFds, rel: str, mode: int = 0o644) -> int:
    """Create ``rel`` (its parent must exist), failing if anything is there already: never
    writes through a link or into a file someone else put in place."""
    parent_rel, name = split(rel)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(name, flags, mode, dir_fd=dirs.dir_fd(parent_rel))


def make_dirs(dirs: DirFds, rel: str, mode: int = 0o755) -> int:
    """``mkdir -p`` of ``rel`` below the root without following links; returns its fd."""
    parts = [p for p in rel.split("/") if p]
    done = ""
    for part in parts:
        here = f"{done}/{part}" if done else part
        with contextlib.suppress(FileExistsError):
            os.mkdir(part, mode, dir_fd=dirs.dir_fd(done))
        done = here
    return dirs.dir_fd(done)


def chown_tree(root: str, uid: int, gid: int) -> None:
    """Make ``root`` and everything under it (symlinks themselves, never their targets) owned
    by ``uid:gid``. Walks by directory descriptors, so a link swapped in for a directory is
    changed itself, never followed. Entries already owned right are left alone."""
    os.makedirs(root, exist_ok=True)
    root_fd = open_root(root)
    try:
        st = os.fstat(root_fd)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(root_fd, uid, gid)
        with DirFds(root_fd) as dirs:
            stack = [""]
            while stack:
                rel = stack.pop()
                try:
                    fd = dirs.dir_fd(rel)
                except Skipped:
                    continue
                with os.scandir(fd) as listing:
                    items = [(item.name, item.stat(follow_symlinks=False)) for item in listing]
                for name, st in items:
                    if (st.st_uid, st.st_gid) != (uid, gid):
                        with contextlib.suppress(FileNotFoundError):
                            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(f"{rel}/{name}" if rel else name)
    finally:
        os.close(root_fd)
