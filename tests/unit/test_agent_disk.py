"""Disk figures of the agent: allocated bytes of a workspace dir, the workspace filesystem's
space, and the meter that holds each running notebook's figure until it is acknowledged."""

from __future__ import annotations

import os
from pathlib import Path

from agent.disk import BLOCK, WorkspaceMeter, allocated_bytes, filesystem_space
from tests.fakes.inventory import FakeClock


def blocks_of(*paths: Path) -> int:
    return sum(os.lstat(p).st_blocks * BLOCK for p in paths)


def test_allocated_bytes_counts_blocks_of_everything_under_the_dir(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "data.bin").write_bytes(os.urandom(100_000))
    (root / "a" / "b" / "small.txt").write_text("x")
    expected = blocks_of(
        root, root / "a", root / "a" / "b", root / "a" / "data.bin", root / "a" / "b" / "small.txt"
    )
    assert allocated_bytes(str(root)) == expected
    assert expected >= 100_000


def test_sparse_files_count_what_they_really_take(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    with open(root / "sparse", "wb") as f:
        f.truncate(10 * 1024**3)  # 10 GiB apparent, nothing written
    assert allocated_bytes(str(root)) < 1024**2


def test_symlinks_are_not_followed_and_hard_links_count_once(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(os.urandom(200_000))
    root = tmp_path / "ws"
    root.mkdir()
    (root / "to-dir").symlink_to(outside)
    (root / "to-file").symlink_to(outside / "big")
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    (root / "file").write_bytes(os.urandom(50_000))
    os.link(root / "file", root / "same-file")
    expected = blocks_of(root, root / "to-dir", root / "to-file", root / "dangling", root / "file")
    assert allocated_bytes(str(root)) == expected
    assert expected < 200_000


async def test_meter_reports_running_notebooks_until_acknowledged(tmp_path: Path) -> None:
    clock = FakeClock()
    meter = WorkspaceMeter(clock)
    for name in ("nb1", "nb2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_bytes(os.urandom(10_000))
    await meter.measure({"nb1": str(tmp_path / "nb1"), "nb2": str(tmp_path / "nb2")})
    sent = meter.pending()
    assert [(u.notebook, u.measured_at) for u in sent] == [("nb1", clock.now), ("nb2", clock.now)]
    assert sent[0].used_bytes == allocated_bytes(str(tmp_path / "nb1"))
    # A heartbeat that did not reach the scheduler sends them again.
    assert meter.pending() == sent
    meter.acknowledge(sent)
    assert meter.pending() == []
    # A newer figure taken while a heartbeat was on its way stays unsent.
    clock.advance(60)
    (tmp_path / "nb1" / "g").write_bytes(os.urandom(50_000))
    await meter.measure({"nb1": str(tmp_path / "nb1")})
    newer = meter.pending()
    meter.acknowledge(sent)
    assert meter.pending() == newer and newer[0].measured_at == clock.now
    # nb2 no longer runs here: forgotten.
    assert meter.get("nb2") is None


async def test_meter_skips_a_dir_that_is_not_there(tmp_path: Path) -> None:
    meter = WorkspaceMeter(FakeClock())
    await meter.measure({"gone": str(tmp_path / "gone")})
    assert meter.pending() == [] and meter.get("gone") is None


async def test_a_closed_meter_measures_nothing(tmp_path: Path) -> None:
    meter = WorkspaceMeter(FakeClock())
    (tmp_path / "nb1").mkdir()
    meter.close()
    await meter.measure({"nb1": str(tmp_path / "nb1")})
    assert meter.pending() == []


def test_filesystem_space_is_statvfs_for_unprivileged_writers(tmp_path: Path) -> None:
    space = filesystem_space(str(tmp_path))
    st = os.statvfs(tmp_path)
    assert space.total_bytes == st.f_blocks * st.f_frsize
    assert 0 < space.free_bytes <= space.total_bytes
