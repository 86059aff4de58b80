"""The snapshot engine against the in-memory FakeObjectStore (real S3 is in tests/integration)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from agent.objectstore import StoreError
from agent.workspace import engine
from agent.workspace import manifest as mf
from agent.workspace.manifest import CHUNK_SIZE
from agent.workspace.packer import content_id
from agent.workspace.restore import OlderSnapshotOnly, SnapshotNotFound, restore
from tests.fakes.objectstore import FakeObjectStore

B = "bkt"
P = "nb1/workspace/"
OLD_NS = 1_600_000_000_123_456_789


def write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    os.chmod(path, mode)


def age(root: Path) -> None:
    """Old mtimes, so the local index trusts them (fresh ones are re-read: racy-clean rule)."""
    for path in [*root.rglob("*"), root]:
        os.utime(path, ns=(OLD_NS, OLD_NS), follow_symlinks=False)


def make_tree(root: Path) -> None:
    write(root / "src" / "pkg" / "mod.py", "print('hi')\n")
    write(root / "run.sh", "#!/bin/sh\necho run\n", 0o750)
    write(root / "secret.txt", "mine", 0o600)
    write(root / "données é.csv", "a;b\n" * 1000)
    write(root / "empty.txt", b"")
    (root / "empty-dir" / "nested").mkdir(parents=True)
    os.chmod(root / "empty-dir", 0o700)
    os.symlink("/etc/passwd", root / "passwd-link")
    os.symlink("src/pkg", root / "pkg-link")
    age(root)


def tree(root: Path) -> dict[str, tuple]:
    """Everything restore must reproduce: type, mode, mtime, content or link target."""
    found: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = ("l", os.readlink(path), st.st_mtime_ns)
        elif path.is_dir():
            found[rel] = ("d", st.st_mode, st.st_mtime_ns)
        else:
            found[rel] = ("f", st.st_mode, st.st_mtime_ns, path.read_bytes())
    return found


async def push(store: FakeObjectStore, src: Path, tmp_path: Path, **kw) -> engine.PushResult:
    return await engine.push(store, B, P, str(src), index_dir=str(tmp_path / "index"), **kw)


async def test_round_trip_keeps_modes_mtimes_empty_dirs_and_symlinks(tmp_path: Path) -> None:
    store = FakeObjectStore()
    src = tmp_path / "src"
    make_tree(src)
    pushed = await push(store, src, tmp_path, kind="stop")
    assert not pushed.unchanged and pushed.snapshot.kind == "stop"
    assert pushed.files == 5 and pushed.snapshot.files == 5
    dest = tmp_path / "dest"
    restored = await restore(store, B, P, str(dest))
    assert restored.snapshot is not None and restored.snapshot.id == pushed.snapshot.id
    assert tree(dest) == tree(src)
    assert restored.symlinks == 2 and not Path(str(dest) + ".restoring").exists()


async def test_any_linux_file_name_round_trips(tmp_path: Path) -> None:
    """Names are bytes on Linux: a backslash, a newline or a quote is a legal name and must
    never make a workspace unrestorable."""
    store = FakeObjectStore()
    src = tmp_path / "src"
    src.mkdir()
    names = ["a\\b.txt", "line\nbreak", 'quote\'s "q"', "tab\tx", "sp ace", "ünï ✓"]
    for name in names:
        write(src / name, name)
    await push(store, src, tmp_path)
    dest = tmp_path / "dest"
    await restore(store, B, P, str(dest))
    assert tree(dest) == tree(src)


async def test_names_that_are_not_utf8_round_trip(tmp_path: Path) -> None:
    """Linux names are bytes: an archive from another system can leave Latin-1 names behind,
    and one of them must not make every push fail."""
    store = FakeObjectStore()
    src = tmp_path / "src"
    src.mkdir()
    raw = os.fsencode(src)
    with open(raw + b"/caf\xe9.txt", "wb") as f:
        f.write(b"latin-1 name")
    os.symlink(b"caf\xe9.txt", raw + b"/link-\xff")
    first = await push(store, src, tmp_path)
    assert first.snapshot.files == 1
    again = await push(store, src, tmp_path)
    assert again.unchanged
    dest = tmp_path / "dest"
    await restore(store, B, P, str(dest))
    assert sorted(os.listdir(os.fsencode(dest))) == [b"caf\xe9.txt", b"link-\xff"]
    assert os.readlink(os.fsencode(dest) + b"/link-\xff") == b"caf\xe9.txt"


async def test_no_change_push_uploads_nothing_and_lists_once(tmp_path: Path) -> None:
    store = FakeObjectStore()
    src = tmp_path / "src"
    make_tree(src)
    first = await push(store, src, tmp_path)
    store.calls.clear()
    again = await push(store, src, tmp_path)
    assert again.unchanged and again.snapshot == first.snapshot
    assert (again.read_files, again.uploaded_objects) == (0, 0)
    assert dict(store.calls) == {"list": 1}  # the parent came from the local index's copy


async def test_editing_one_byte_of_a_large_file_uploads_one_chunk(tmp_path: Path) -> None:
    store = FakeObjectStore()
    src = tmp_path / "src"
    big = bytearray(os.urandom(3 * CHUNK_SIZE + 1234))
    write(src / "model.bin", bytes(big))
    age(src)
    first = await push(store, src, tmp_path)
    assert first.uploaded_objects == 4
    assert len(store.keys(B, P + "chunks/")) == 4
    big[CHUNK_SIZE + 10] ^= 0xFF
    write(src / "model.bin", bytes(big))
    store.put_keys.clear()
    second = await push(store, src, tmp_path)
    assert [k.split("/")[-2] for k in store.put_keys] == ["chunks", "snapshots"]
    assert second.uploaded_objects == 1 and second.uploaded_bytes <= CHUNK_SIZE
    dest = tmp_path / "dest"
    await restore(store, B, P, str(dest))
    assert (dest / "model.bin").read_bytes() == bytes(big)


async def test_a_thousand_small_files_are_a_handful_of_puts(tmp_path: Path) -> None:
    store = FakeObjectStore()
    src = tmp_path / "src"
    for i in range(1000):
        write(src / f"d{i % 10}" / f"f{i}.py", f"x = {i}\n" * (i % 50 + 1))
    result = await push(store, src, tmp_path)
    assert store.calls["put_bytes"] <= 5  # pack, its .idx, the manifest
    assert result.files == 1000
    dest = tmp_path / "dest"
    restored = await restore(store, B, P, str(dest))
    assert restored.requests <= 2  # one coalesced ranged GET of the pack
    assert (dest / "d7" / "f997.py").read_text() == "x = 997\n" * 48


async def test_symlink_to_a_file_outside_is_stored_as_a_link(tmp_path: Path) -> None:
    store = FakeObjectStore()
    outside = tmp_path / "outside-secret"
    outside.write_bytes(b"TOP-SECRET-CONTENT" * 100)
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(str(outside), src / "leak")
    os.symlink("/etc/shadow", src / "shadow")
    await push(store, src, tmp_path)
    for body, _ in store.objects.values():
        assert b"TOP-SECRET" not in body
    assert store.keys(B, P + "packs/") == []
    snapshot_id = (await engine.latest_snapshot_id(store, B, P)) or ""
    manifest, _ = await engine.load_manifest(store, B, P, snapshot_id)
    assert [(e.path, e.kind, e.target) for e in manifest.entries] == [
        ("leak", "l", str(outside)),
        ("shadow", "l", "/etc/shadow"),
    ]


@pytest.mark.parametrize(
    ("path", "complaint"),
    [
        ("../escape", "'..'"),
        ("a/../../b", "'..'"),
        ("/etc/cron.d/x", "absolute"),
        ("link/passwd", "traverse the symlink 'link'"),
    ],
)
async def test_restore_refuses_unsafe_manifest_paths(
    tmp_path: Path, path: str, complaint: str
) -> None:
    store = FakeObjectStore()
    entries = [
        mf.Entry("link", "l", 0o777, OLD_NS, 0, "/etc"),
        mf.Entry(path, "f", 0o644, OLD_NS, 0),
    ]
    planted = mf.Manifest(
        id=mf.new_snapshot_id(), created_at=0, kind="stop", entries=entries, blobs={}
    )
    await store.put_bytes(B, P + "snapshots/" + planted.id, mf.encode(planted))
    with pytest.raises(mf.UnsafePath, match=complaint) as caught:
        await restore(store, B, P, str(tmp_path / "dest"))
    assert repr(path) in str(caught.value)
    assert not (tmp_path / "dest").exists() and not (tmp_path / "escape").exists()


async def test_s3_down_mid_push_keeps_previous_snapshot_and_retry_resumes(tmp_path: Path) -> None:
    store = FakeObjectStore()
    src = tmp_path / "src"
    make_tree(src)
    write(src / "big.bin", os.urandom(2 * CHUNK_SIZE))
    first = await push(store, src, tmp_path)
    before = tree(src)
    for i in range(300):
        write(src / "new" / f"n{i}.txt", os.urandom(200_000))  # ~60 MB: two packs
    write(src / "big.bin", os.urandom(3 * CHUNK_SIZE))
    store.down_after(5)
    with pytest.raises(StoreError):
        await push(store, src, tmp_path)
    store.down_for(0)
    assert await engine.latest_snapshot_id(store, B, P) == first.snapshot.id
    dest = tmp_path / "dest"
    await restore(store, B, P, str(dest), snapshot=first.snapshot.id)
    assert tree(dest) == before
    arrived = {k for k in store.put_keys if "/snapshots/" not in k}
    store.put_keys.clear()
    retried = await push(store, src, tmp_path)
    assert not arrived & set(store.put_keys), "a finished object was uploaded again"
    assert retried.reused_objects >= 1
    dest2 = tmp_path / "dest2"
    await restore(store, B, P, str(dest2))
    assert tree(dest2) == tree(src)


async def test_restore_of_nothing_is_an_error_naming_the_prefix(tmp_path: Path) -> None:
    with pytest.raises(SnapshotNotFound, match="no snapshot in s3://bkt/nb1/workspace/"):
        await restore(FakeObjectStore(), B, P, str(tmp_path / "ws"))
    assert os.listdir(tmp_path) == []  # neither the target nor a .restoring


async def test_restore_of_nothing_gives_an_empty_dir_when_allowed(tmp_path: Path) -> None:
    result = await restore(FakeObjectStore(), B, P, str(tmp_path / "ws"), allow_empty=True)
    assert result.snapshot is None and os.listdir(tmp_path / "ws") == []


async def test_restore_refuses_an_existing_target(tmp_path: Path) -> None:
    with pytest.raises(FileExistsError):
        await restore(FakeObjectStore(), B, P, str(tmp_path))


async def test_special_files_are_skipped(tmp_path: Path) -> None:
    store = FakeObjectStore()
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    write(src / "ok.txt", "ok")
    result = await push(store, src, tmp_path)
    assert result.skipped_special == 1 and result.files == 1


async def test_progress_is_reported(tmp_path: Path) -> None:
    store = FakeObjectStore()
    src = tmp_path / "src"
    make_tree(src)
    events = []
    await push(store, src, tmp_path, progress=events.append)
    assert events and events[-1].phase == "push"
    assert events[-1].files_done == events[-1].files_total == 4  # empty.txt needs no read


# ---------------------------------------------------- what a killed PUT can leave behind
# Some S3 servers (SeaweedFS among them) keep a truncated object when the client dies mid-PUT.


async def test_truncated_chunk_left_by_a_killed_push_is_uploaded_again(tmp_path: Path) -> None:
    store = FakeObjectStore()
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(CHUNK_SIZE + 1000)  # incompressible: chunks are stored raw
    write(src / "weights.bin", big)
    cid = content_id(big[:CHUNK_SIZE])
    store._store(B, P + mf.CHUNKS + cid, big[: CHUNK_SIZE // 3], {})  # the truncated PUT
    await push(store, src, tmp_path)
    assert len(store.objects[(B, P + mf.CHUNKS + cid)][0]) == CHUNK_SIZE
    dest = tmp_path / "dest"
    await restore(store, B, P, str(dest))
    assert (dest / "weights.bin").read_bytes() == big


async def test_complete_chunk_left_by_a_killed_push_is_reused(tmp_path: Path) -> None:
    store = FakeObjectStore()
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(2 * CHUNK_SIZE)
    write(src / "weights.bin", big)
    first = big[:CHUNK_SIZE]  # the killed push got this chunk fully stored
    store._store(B, P + mf.CHUNKS + content_id(first), first, {})
    result = await push(store, src, tmp_path)
    assert result.reused_objects == 1
    assert CHUNK_SIZE <= result.uploaded_bytes < CHUNK_SIZE + 100_000  # the 2nd chunk, manifest
    dest = tmp_path / "dest"
    await restore(store, B, P, str(dest))
    assert (dest / "weights.bin").read_bytes() == big


async def test_unreadable_or_overlong_idx_is_ignored(tmp_path: Path) -> None:
    store = FakeObjectStore()
    src = tmp_path / "src"
    make_tree(src)
    store._store(B, P + mf.PACKS + "aa", b"x" * 10, {})
    store._store(B, P + mf.PACKS + "aa" + mf.IDX_SUFFIX, b"\x93\xa1", {})  # truncated
    store._store(B, P + mf.PACKS + "bb", b"x" * 10, {})
    idx = mf.encode_idx([("0" * 64, 0, 500, 500, False)])  # points past the 10-byte pack
    store._store(B, P + mf.PACKS + "bb" + mf.IDX_SUFFIX, idx, {})
    await push(store, src, tmp_path)
    dest = tmp_path / "dest"
    await restore(store, B, P, str(dest))
    assert tree(dest) == tree(src)


async def test_truncated_newest_manifest_is_skipped_by_push_and_restore(tmp_path: Path) -> None:
    store = FakeObjectStore()
    src = tmp_path / "src"
    make_tree(src)
    first = await push(store, src, tmp_path)
    good = store.objects[(B, P + mf.SNAPSHOTS + first.snapshot.id)][0]
    # A killed push's manifest is newer than the last good one and older than the next push.
    broken_id = mf.new_snapshot_id(first.snapshot.created_at + 0.002)
    store._store(B, P + mf.SNAPSHOTS + broken_id, good[: len(good) // 2], {})
    # restore refuses to fall back silently: it names the unreadable one
    dest = tmp_path / "dest"
    with pytest.raises(OlderSnapshotOnly, match=f"{broken_id}.*does not decode"):
        await restore(store, B, P, str(dest))
    assert sorted(os.listdir(tmp_path)) == [
        "index",
        "src",
    ]
    # and falls back to the newest snapshot that decodes when allowed, naming the skipped one
    restored = await restore(store, B, P, str(dest), allow_older=True)
    assert restored.snapshot.id == first.snapshot.id and tree(dest) == tree(src)
    assert len(restored.skipped_snapshots) == 1 and broken_id in restored.skipped_snapshots[0]
    # and a push builds on it instead of failing forever
    write(src / "new.txt", "after the crash")
    await asyncio.sleep(0.01)
    second = await push(store, src, tmp_path / "fresh-index")
    assert not second.unchanged and second.snapshot.id > broken_id
    dest2 = tmp_path / "dest2"
    await restore(store, B, P, str(dest2))
    assert (dest2 / "new.txt").read_text() == "after the crash"


# ---------------------------------------------------- fidelity: links, root, holes


async def test_hard_links_come_back_as_hard_links(tmp_path: Path) -> None:
    store = FakeObjectStore()
    src = tmp_path / "src"
    write(src / "data" / "model.bin", os.urandom(50_000))
    os.link(src / "data" / "model.bin", src / "model-link.bin")
    os.link(src / "data" / "model.bin", src / "z" / "again.bin") if (
        src / "z"
    ).mkdir() is None else None
    write(src / "other.bin", b"other")
    age(src)
    result = await push(store, src, tmp_path)
    assert result.read_files == 2  # the linked content is read once
    dest = tmp_path / "dest"
    restored = await restore(store, B, P, str(dest))
    assert restored.hard_links == 2
    inodes = {
        os.lstat(dest / p).st_ino for p in ("data/model.bin", "model-link.bin", "z/again.bin")
    }
    assert len(inodes) == 1 and os.lstat(dest / "model-link.bin").st_nlink == 3
    assert tree(dest) == tree(src)


async def test_the_workspace_roots_own_mode_and_mtime_come_back(tmp_path: Path) -> None:
    store = FakeObjectStore()
    src = tmp_path / "src"
    make_tree(src)
    os.chmod(src, 0o710)
    os.utime(src, ns=(OLD_NS, OLD_NS))
    await push(store, src, tmp_path)
    dest = tmp_path / "dest"
    await restore(store, B, P, str(dest))
    assert os.stat(dest).st_mode & 0o7777 == 0o710
    assert os.stat(dest).st_mtime_ns == OLD_NS
    # a change of the root's mode alone is a change
    os.chmod(src, 0o755)
    assert not (await push(store, src, tmp_path)).unchanged


async def test_a_sparse_file_is_neither_read_nor_stored_nor_written_where_it_has_holes(
    tmp_path: Path,
) -> None:
    store = FakeObjectStore()
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "empty-2g.img", "wb") as out:
        out.truncate(2 << 30)  # 2 GiB, no data at all
    head, tail = os.urandom(1000), os.urandom(3000)
    with open(src / "mixed.img", "wb") as out:
        out.write(head)
        out.seek(5 * CHUNK_SIZE + 7)
        out.write(tail)
    result = await push(store, src, tmp_path)
    assert result.read_bytes < 2 * CHUNK_SIZE  # the two chunks holding data, nothing of 2 GiB
    assert sum(len(body) for body, _ in store.objects.values()) < CHUNK_SIZE
    dest = tmp_path / "dest"
    await restore(store, B, P, str(dest))
    empty = os.stat(dest / "empty-2g.img")
    assert empty.st_size == 2 << 30 and empty.st_blocks == 0
    mixed = os.stat(dest / "mixed.img")
    assert mixed.st_size == 5 * CHUNK_SIZE + 7 + len(tail)
    assert mixed.st_blocks * 512 <= 2 * CHUNK_SIZE + 65536  # holes stay holes
    with open(dest / "mixed.img", "rb") as restored:
        assert restored.read(len(head)) == head
        assert restored.read(CHUNK_SIZE) == bytes(CHUNK_SIZE)
        restored.seek(5 * CHUNK_SIZE + 7)
        assert restored.read() == tail


# ---------------------------------------------------- a file written while a push reads it


async def test_a_large_file_truncated_mid_push_is_stored_as_it_was_read_again(
    tmp_path: Path,
) -> None:
    store = FakeObjectStore()
    src = tmp_path / "src"
    src.mkdir()
    original = os.urandom(3 * CHUNK_SIZE)
    write(src / "train.log", original)

    def truncate_once(key: str) -> None:
        if key.startswith(P + mf.CHUNKS) and store.on_put is not None:
            store.on_put = None
            os.truncate(src / "train.log", 1_000_000)

    store.on_put = truncate_once
    result = await push(store, src, tmp_path)
    assert result.unstable == []  # read again after the change, then stable
    [entry] = [
        e for e in mf.decode(store.objects[(B, P + mf.SNAPSHOTS + result.snapshot.id)][0]).entries
    ]
    assert entry.size == 1_000_000
    dest = tmp_path / "dest"
    await restore(store, B, P, str(dest))
    assert (dest / "train.log").read_bytes() == original[:1_000_000]  # no zeros never there


async def test_a_file_that_never_stops_changing_keeps_its_last_complete_read(
    tmp_path: Path,
) -> None:
    store = FakeObjectStore()
    src = tmp_path / "src"
    src.mkdir()
    write(src / "growing.bin", os.urandom(CHUNK_SIZE + 10))
    write(src / "small.txt", "steady")

    def append(key: str) -> None:
        if key.startswith(P + mf.CHUNKS):
            with open(src / "growing.bin", "ab") as out:
                out.write(os.urandom(100))

    store.on_put = append
    result = await push(store, src, tmp_path)
    store.on_put = None
    assert result.unstable == ["growing.bin"]
    manifest = mf.decode(store.objects[(B, P + mf.SNAPSHOTS + result.snapshot.id)][0])
    entry = next(e for e in manifest.entries if e.path == "growing.bin")
    dest = tmp_path / "dest"
    await restore(store, B, P, str(dest))
    restored = (dest / "growing.bin").read_bytes()
    assert len(restored) == entry.size
    assert restored == (src / "growing.bin").read_bytes()[: entry.size]  # a real prefix
    # a file that kept changing is not trusted by the index: the next push reads it again
    again = await push(store, src, tmp_path)
    assert again.read_files >= 1 and not again.unchanged
