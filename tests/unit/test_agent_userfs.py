"""agent.userfs: what the root agent does with paths a notebook's user controls. Real files,
real FIFOs and real credentials (the tests run as root, as the agent does)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from agent import userfs
from agent.workspace.packer import build_pack
from agent.workspace.scan import scan

USER = (1000, 1000)


def write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host file the notebook's user must never get back: readable by anyone, so only the
    no-follow discipline keeps it out."""
    marker = tmp_path / "host-secret"
    write(marker, "HOST-SECRET-" + os.urandom(8).hex())
    return marker


def test_a_file_swapped_for_a_link_after_the_scan_is_skipped_not_read(
    tmp_path: Path, outside: Path
) -> None:
    ws = tmp_path / "ws"
    write(ws / "a.txt", "mine")
    write(ws / "sub" / "b.txt", "mine too")
    entries = {e.path: e for e in scan(str(ws)).entries}
    (ws / "a.txt").unlink()
    os.symlink(outside, ws / "a.txt")
    # a directory swapped for a link to a directory outside, holding a file of the same name
    (outside.parent / "elsewhere").mkdir()
    write(outside.parent / "elsewhere" / "b.txt", outside.read_bytes())
    (ws / "sub" / "b.txt").unlink()
    (ws / "sub").rmdir()
    os.symlink(outside.parent / "elsewhere", ws / "sub")
    build = build_pack(str(ws), [entries["a.txt"], entries["sub/b.txt"]], set(), "packs/x")
    assert build.cids == [None, None]
    assert outside.read_bytes() not in build.payload and build.payload == b""
    assert "'a.txt' is a symlink, not followed" in build.skipped[0]
    assert "directory 'sub': is a symlink, not followed" in build.skipped[1]


def test_a_fifo_swapped_in_is_skipped_without_blocking(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    write(ws / "a.txt", "mine")
    [entry] = scan(str(ws)).entries
    (ws / "a.txt").unlink()
    os.mkfifo(ws / "a.txt")
    done: list[object] = []
    reader = threading.Thread(
        target=lambda: done.append(build_pack(str(ws), [entry], set(), "packs/x")), daemon=True
    )
    reader.start()
    reader.join(10)
    assert done, "reading a FIFO swapped in for a file blocked"
    assert "is not a regular file" in done[0].skipped[0]  # type: ignore[attr-defined]


def test_a_file_replaced_by_another_file_since_the_scan_is_skipped(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    write(ws / "a.txt", "first")
    [entry] = scan(str(ws)).entries
    write(ws / "other", "second")
    os.replace(ws / "other", ws / "a.txt")  # a new inode under the same name
    build = build_pack(str(ws), [entry], set(), "packs/x")
    assert build.cids == [None] and "replaced since the scan" in build.skipped[0]


def test_the_scan_never_enters_a_directory_link(tmp_path: Path, outside: Path) -> None:
    ws = tmp_path / "ws"
    write(ws / "a.txt", "mine")
    os.symlink(outside.parent, ws / "hostdir")
    found = scan(str(ws))
    assert [(e.path, e.kind) for e in found.entries] == [("a.txt", "f"), ("hostdir", "l")]


def test_a_root_that_is_a_link_is_refused(tmp_path: Path) -> None:
    os.symlink(tmp_path, tmp_path / "link")
    with pytest.raises(OSError):
        scan(str(tmp_path / "link"))


def test_reads_run_with_the_notebook_users_rights(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    write(ws / "theirs.txt", "user data")
    write(ws / "locked.txt", "the user's own, mode 000", 0o000)
    write(ws / "roots.txt", "only root may read this", 0o600)
    os.chown(ws, *USER)
    os.chown(ws / "theirs.txt", *USER)
    os.chown(ws / "locked.txt", *USER)
    entries = scan(str(ws)).entries
    build = build_pack(str(ws), entries, set(), "packs/x", owner=USER)
    by_path = dict(zip([e.path for e in entries], build.cids, strict=True))
    assert by_path["theirs.txt"] is not None
    # the user's own file: they could chmod and read it, so it is saved
    assert by_path["locked.txt"] is not None
    # a root-owned 0600 file is nothing the user could read: never read for them
    assert by_path["roots.txt"] is None
    assert any("roots.txt" in why and "notebook's user" in why for why in build.skipped)
    assert b"only root" not in build.payload


def test_as_user_changes_only_the_calling_thread(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    write(secret, "root only", 0o600)
    seen: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def as_notebook_user() -> None:
        with userfs.as_user(*USER):
            try:
                secret.read_bytes()
                seen.append("read")
            except PermissionError:
                seen.append("refused")
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=as_notebook_user)
    worker.start()
    assert inside.wait(10)
    # meanwhile this thread is still root
    assert secret.read_bytes() == b"root only"
    release.set()
    worker.join(10)
    assert seen == ["refused"]
    assert secret.read_bytes() == b"root only"


def test_read_stable_reads_again_when_the_file_changed_during_the_read(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    write(path, "first line\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        before = os.fstat(fd)
        with open(path, "a") as out:  # appended after the version the read starts from
            out.write("second line\n")
        read = userfs.read_stable(fd, before)
    finally:
        os.close(fd)
    assert read.stable and read.attempts == 2
    assert read.data == b"first line\nsecond line\n" and read.st.st_size == len(read.data)


def test_read_stable_of_a_shrunk_file_holds_only_bytes_that_were_read(tmp_path: Path) -> None:
    path = tmp_path / "big"
    write(path, b"x" * 100_000)
    fd = os.open(path, os.O_RDONLY)
    try:
        before = os.fstat(fd)
        os.truncate(path, 10)
        read = userfs.read_stable(fd, before, retries=0)
    finally:
        os.close(fd)
    assert not read.stable and read.data == b"x" * 10  # never zeros that were not there


def test_chown_tree_changes_links_themselves_never_their_targets(
    tmp_path: Path, outside: Path
) -> None:
    ws = tmp_path / "ws"
    write(ws / "sub" / "a.txt", "mine")
    os.symlink(outside, ws / "sub" / "link")
    os.symlink(outside.parent, ws / "dirlink")
    userfs.chown_tree(str(ws), *USER)
    for path in (ws, ws / "sub", ws / "sub" / "a.txt", ws / "sub" / "link", ws / "dirlink"):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == USER, path
    assert os.stat(outside).st_uid == 0 and os.stat(outside.parent).st_uid == 0


def test_create_file_never_writes_through_a_link(tmp_path: Path, outside: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    os.symlink(outside, ws / ".workspace.initialized")
    before = outside.read_bytes()
    root = userfs.open_root(str(ws))
    try:
        with userfs.DirFds(root) as dirs, pytest.raises(FileExistsError):
            userfs.create_file(dirs, ".workspace.initialized")
    finally:
        os.close(root)
    assert outside.read_bytes() == before


def test_a_tree_deeper_than_pythons_stack_is_walked_and_read(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    fd = os.open(ws, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(1500):  # deeper than the recursion limit; paths beyond PATH_MAX
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        leaf = os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"deep")
        os.close(leaf)
    finally:
        os.close(fd)
    try:
        entries = scan(str(ws)).entries
        [leaf_entry] = [e for e in entries if e.kind == "f"]
        assert leaf_entry.path.count("/") == 1500
        build = build_pack(str(ws), [leaf_entry], set(), "packs/x")
        assert build.cids[0] is not None and build.payload.endswith(b"deep")
    finally:
        flatten_and_remove(ws)


def flatten_and_remove(top: Path) -> None:
    """Remove a tree too deep for shutil.rmtree (and pytest's clean-up) one level at a time:
    each level's child is moved up beside it, then the emptied level removed."""
    current = top / "d"
    while current.exists():
        child = current / "d"
        if child.exists():
            moved = top / f"up{id(current)}"
            os.rename(child, moved)
            for name in os.listdir(current):
                os.unlink(current / name)
            os.rmdir(current)
            current = moved
        else:
            for name in os.listdir(current):
                os.unlink(current / name)
            os.rmdir(current)
            break
