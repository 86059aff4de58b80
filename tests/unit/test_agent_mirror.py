"""Mirror logic against the in-memory FakeObjectStore (the real-S3 round trip is in
tests/integration)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.workspace import mirror
from tests.fakes.objectstore import FakeObjectStore

B = "bkt"
P = "nb1/workspace/"


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


async def test_push_skips_unchanged_and_deletes_extras(tmp_path: Path) -> None:
    store = FakeObjectStore()
    src = tmp_path / "src"
    write(src / "a.txt", "a")
    write(src / "sub" / "b.txt", "b")
    first = await mirror.push(store, B, P, str(src))
    assert (first.uploaded, first.skipped, first.deleted) == (2, 0, 0)
    second = await mirror.push(store, B, P, str(src))
    assert (second.uploaded, second.skipped, second.deleted) == (0, 2, 0)
    (src / "sub" / "b.txt").unlink()
    write(src / "a.txt", "changed")
    events: list[tuple[str, int, int]] = []
    third = await mirror.push(store, B, P, str(src), progress=lambda *e: events.append(e))
    assert (third.uploaded, third.skipped, third.deleted) == (1, 0, 1)
    assert store.keys(B) == [P + "a.txt"]
    assert events == [("upload", 1, 1), ("delete", 1, 1)]


async def test_mode_change_alone_is_pushed(tmp_path: Path) -> None:
    store = FakeObjectStore()
    write(tmp_path / "run.sh", "#!/bin/sh\n")
    await mirror.push(store, B, P, str(tmp_path))
    os.chmod(tmp_path / "run.sh", 0o755)
    assert (await mirror.push(store, B, P, str(tmp_path))).uploaded == 1


@pytest.mark.parametrize(
    "key",
    [P + "../escape", P + "a/../../x", P + "/etc/passwd", P + "./a", P + "a//b", P, "other/k"],
)
def test_safe_relpath_refuses(key: str) -> None:
    with pytest.raises(mirror.UnsafeKey):
        mirror.safe_relpath(key, P)


async def test_restore_refuses_escaping_keys(tmp_path: Path) -> None:
    store = FakeObjectStore()
    store.objects[(B, P + "ok.txt")] = (b"fine", {"mode": "600"})
    store.objects[(B, P + "../../../evil")] = (b"owned", {})
    store.objects[(B, P + "x/../../evil2")] = (b"owned", {})
    target = tmp_path / "ws" / "nb1"
    result = await mirror.restore(store, B, P, str(target))
    assert sorted(result.refused) == sorted([P + "../../../evil", P + "x/../../evil2"])
    assert sorted(os.listdir(target)) == ["ok.txt"]
    assert oct(os.stat(target / "ok.txt").st_mode & 0o777) == "0o600"
    assert not list(tmp_path.rglob("evil*"))
    assert not (tmp_path / "ws" / "nb1.restoring").exists()


async def test_restore_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store = FakeObjectStore()
    store.objects[(B, P + "link")] = (b"", {"symlink": str(outside).replace("/", "%2F")})
    store.objects[(B, P + "link/planted")] = (b"owned", {})
    with pytest.raises(OSError):
        await mirror.restore(store, B, P, str(tmp_path / "ws"))
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "ws").exists()


async def test_restore_refuses_existing_target(tmp_path: Path) -> None:
    with pytest.raises(FileExistsError):
        await mirror.restore(FakeObjectStore(), B, P, str(tmp_path))


async def test_restore_wipes_leftover_staging_dir(tmp_path: Path) -> None:
    store = FakeObjectStore()
    store.objects[(B, P + "a")] = (b"a", {})
    leftover = tmp_path / "nb1.restoring"
    write(leftover / "stale.txt", "from an interrupted restore")
    await mirror.restore(store, B, P, str(tmp_path / "nb1"))
    assert sorted(os.listdir(tmp_path / "nb1")) == ["a"]


async def test_delete_prefix(tmp_path: Path) -> None:
    store = FakeObjectStore()
    for i in range(3):
        store.objects[(B, f"{P}{i}")] = (b"", {})
    store.objects[(B, "nb2/workspace/x")] = (b"", {})
    assert await mirror.delete_prefix(store, B, P) == 3
    assert store.keys(B) == ["nb2/workspace/x"]
