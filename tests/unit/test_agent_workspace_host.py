"""HostWorkspaces over the snapshot engine, retention and GC, with the FakeObjectStore."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.workspace import engine, retention
from agent.workspace import manifest as mf
from agent.workspace.host import MARKER, HostWorkspaces, MarkerMissing
from tests.fakes.objectstore import FakeObjectStore

B = "bkt"
DAY = 86400.0


def host(store: FakeObjectStore, tmp_path: Path, **kw) -> HostWorkspaces:
    return HostWorkspaces(
        store, B, str(tmp_path / "ws"), str(tmp_path / "scratch"), state_dir=str(tmp_path), **kw
    )


async def test_push_checkpoint_snapshots_and_fork_restore(tmp_path: Path) -> None:
    store = FakeObjectStore()
    workspaces = host(store, tmp_path)
    await workspaces.prepare("nb1", initialized=False)
    (Path(workspaces.workspace_dir("nb1")) / "notes.txt").write_text("v1")
    events = []
    checkpoint = await workspaces.checkpoint("nb1", progress=events.append)
    assert checkpoint is not None and checkpoint.snapshot.kind == "checkpoint"
    assert events and {e.phase for e in events} == {"checkpoint"}
    (Path(workspaces.workspace_dir("nb1")) / "notes.txt").write_text("v2")
    stop = await workspaces.push("nb1")
    assert stop is not None and stop.snapshot.kind == "stop"
    assert stop.kept == [checkpoint.snapshot.id, stop.snapshot.id]
    listed = await workspaces.snapshots("nb1")
    assert [(s.id, s.kind, s.files) for s in listed] == [
        (checkpoint.snapshot.id, "checkpoint", 2),
        (stop.snapshot.id, "stop", 2),
    ]
    await workspaces.remove_workspace_dir("nb1")

    # A fork restores another notebook's (older) snapshot into its own dir.
    restored = await workspaces.restore(
        "fork1", source_notebook="nb1", snapshot=checkpoint.snapshot.id
    )
    assert restored.snapshot is not None and restored.snapshot.id == checkpoint.snapshot.id
    assert (Path(workspaces.workspace_dir("fork1")) / "notes.txt").read_text() == "v1"
    await workspaces.prepare("nb1", initialized=True)  # restores the newest, marker present
    assert (Path(workspaces.workspace_dir("nb1")) / "notes.txt").read_text() == "v2"


async def test_unchanged_push_after_restore_reads_nothing(tmp_path: Path) -> None:
    store = FakeObjectStore()
    workspaces = host(store, tmp_path)
    await workspaces.prepare("nb1", initialized=False)
    data = Path(workspaces.workspace_dir("nb1")) / "data.bin"
    data.write_bytes(os.urandom(100_000))
    os.utime(data, ns=(1_600_000_000_000_000_000,) * 2)
    await workspaces.push("nb1")
    await workspaces.remove_workspace_dir("nb1")
    await workspaces.prepare("nb1", initialized=True)
    again = await workspaces.push("nb1")
    assert again is not None and again.read_files == 0


async def test_missing_marker_after_restore_refuses_to_start(tmp_path: Path) -> None:
    store = FakeObjectStore()
    workspaces = host(store, tmp_path)
    os.makedirs(workspaces.workspace_dir("nb1"))
    await workspaces.push("nb1")
    await workspaces.remove_workspace_dir("nb1")
    with pytest.raises(MarkerMissing, match=MARKER):
        await workspaces.prepare("nb1", initialized=True)
    assert not workspaces.has_workspace("nb1")


def ids_at(*times: float) -> list[str]:
    return [mf.new_snapshot_id(t) for t in times]


def test_select_kept_keeps_last_n_and_one_per_day() -> None:
    now = 1_800_000_000.0
    hourly_today = ids_at(*(now - h * 3600 for h in range(6)))
    older = ids_at(*(now - d * DAY for d in range(1, 10)))
    two_same_day = ids_at(now - 3 * DAY - 60, now - 3 * DAY - 30)
    kept = retention.select_kept(hourly_today + older + two_same_day, 5, 7, now)
    assert set(hourly_today[:5]) <= set(kept)  # the last five (newest first above)
    assert hourly_today[5] not in kept
    assert set(older[:6]) <= set(kept)  # days 1..6
    assert older[6] not in kept and older[8] not in kept  # days 7+ are beyond the window
    # On day 3 only the newest of that day's snapshots is kept.
    assert older[2] in kept and not set(two_same_day) & set(kept)


async def test_retention_drops_old_snapshots_and_gc_keeps_what_kept_ones_use(
    tmp_path: Path,
) -> None:
    clock = [1_800_000_000.0]
    store = FakeObjectStore(clock=lambda: clock[0])
    workspaces = host(store, tmp_path, retention_last=2, retention_daily=0, gc_grace_s=3600)
    directory = Path(workspaces.workspace_dir("nb1"))
    directory.mkdir(parents=True)
    (directory / "keep.txt").write_text("always here")
    for i in range(4):
        (directory / "changing.txt").write_text(f"version {i}")
        result = await workspaces.push("nb1")
        assert result is not None
    assert len(result.kept) == 2 and result.snapshot.id in result.kept
    assert [s.id for s in await workspaces.snapshots("nb1")] == result.kept
    # Within the grace period nothing is collected: it could be a push in progress.
    assert await workspaces.collect_garbage("nb1") == 0
    clock[0] += 7200
    assert await retention.collect_garbage(store, B, "nb1/workspace/", now=clock[0]) > 0
    for snapshot_id in result.kept:
        await workspaces.restore(
            "x" + snapshot_id[-8:], source_notebook="nb1", snapshot=snapshot_id
        )
    restored = Path(workspaces.workspace_dir("x" + result.kept[0][-8:]))
    assert (restored / "keep.txt").read_text() == "always here"
    # Every object a kept snapshot references still exists.
    for snapshot_id in result.kept:
        manifest, _ = await engine.load_manifest(store, B, "nb1/workspace/", snapshot_id)
        for blob in manifest.blobs.values():
            assert store.keys(B, "nb1/workspace/" + blob.key), blob.key


async def test_delete_remote_removes_everything(tmp_path: Path) -> None:
    store = FakeObjectStore()
    workspaces = host(store, tmp_path)
    await workspaces.prepare("nb1", initialized=False)
    (Path(workspaces.workspace_dir("nb1")) / "f.txt").write_text("x")
    await workspaces.push("nb1")
    assert await workspaces.delete_remote("nb1") == 3  # manifest, pack, pack index
    assert store.keys(B, "nb1/") == []


async def test_a_host_cut_off_while_the_notebook_moved_never_pushes_over_the_other_hosts_work(
    tmp_path: Path,
) -> None:
    """Host A was declared lost; the notebook ran on host B and saved there. A's copy must not
    become the newest snapshot, and a later start on A restores B's work, not A's copy."""
    store = FakeObjectStore()
    a = host(store, tmp_path / "a")
    b = host(store, tmp_path / "b")
    await a.prepare("nb1", initialized=False)
    (Path(a.workspace_dir("nb1")) / "notes.txt").write_text("before the partition")
    await a.checkpoint("nb1")
    assert await a.written_elsewhere("nb1") is None  # A wrote the newest snapshot

    await b.prepare("nb1", initialized=True)  # restored on B from A's checkpoint
    (Path(b.workspace_dir("nb1")) / "notes.txt").write_text("done on B")
    moved = await b.push("nb1")
    assert moved is not None
    assert await a.written_elsewhere("nb1") == moved.snapshot.id
    assert await b.written_elsewhere("nb1") is None

    # the notebook comes back to A: its stale dir is set aside, B's snapshot is restored
    await a.prepare("nb1", initialized=True)
    assert (Path(a.workspace_dir("nb1")) / "notes.txt").read_text() == "done on B"
    aside = [p for p in (tmp_path / "a" / "ws").iterdir() if ".superseded-" in p.name]
    assert len(aside) == 1 and (aside[0] / "notes.txt").read_text() == "before the partition"


async def test_warm_up_checks_the_bucket_once_ahead_of_the_first_sync(tmp_path: Path) -> None:
    store = FakeObjectStore()
    hw = host(store, tmp_path)
    await hw.warm_up()
    assert store.calls["ensure_bucket"] == 1
    await hw.restore("nb1")
    assert store.calls["ensure_bucket"] == 1  # the restore found it done


async def test_warm_up_with_storage_down_leaves_it_to_the_first_sync(tmp_path: Path) -> None:
    store = FakeObjectStore()
    store.down_for(1)
    hw = host(store, tmp_path)
    await hw.warm_up()  # logged, not raised
    await hw.restore("nb1")
    assert store.calls["ensure_bucket"] == 2
