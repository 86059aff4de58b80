"""The pure parts of scripts/bench-sync: workload determinism, the 1% choice, tree compare,
ratios, table and JSON. Nothing here times anything."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from bench import report, workloads  # noqa: E402

SMALL = {"n_files": 40, "big_size": 256 * 1024}


def test_same_seed_same_workspace_and_another_seed_differs(tmp_path):
    first = workloads.generate_workspace(tmp_path / "one", seed=7, **SMALL)
    second = workloads.generate_workspace(tmp_path / "two", seed=7, **SMALL)
    other = workloads.generate_workspace(tmp_path / "three", seed=8, **SMALL)
    one = workloads.tree_digest(tmp_path / "one")
    assert first == second
    assert one == workloads.tree_digest(tmp_path / "two")
    assert one != workloads.tree_digest(tmp_path / "three")
    assert first["files"] == len(one) == SMALL["n_files"] + 2
    assert workloads.tree_size(tmp_path / "one")["bytes"] == first["bytes"]
    assert other["files"] == first["files"]


def test_workspace_sizes_and_checkpoint_layout(tmp_path):
    workloads.generate_workspace(tmp_path / "w", seed=1, **SMALL)
    sizes = {
        p: (tmp_path / "w" / p).stat().st_size for p in workloads.regular_files(tmp_path / "w")
    }
    big = {p: s for p, s in sizes.items() if p.startswith("big/")}
    assert big == {
        "big/checkpoint.safetensors": SMALL["big_size"],
        "big/weights-random.bin": SMALL["big_size"],
    }
    assert all(1024 <= s <= 60 * 1024 for p, s in sizes.items() if p not in big)
    raw = (tmp_path / "w" / "big" / "checkpoint.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert header["__metadata__"]["format"] == "pt"


def test_choose_changed_is_one_percent_and_order_independent():
    paths = [f"d/{i:05d}" for i in range(2000)]
    chosen = workloads.choose_changed(paths, seed=3)
    assert len(chosen) == 20
    assert chosen == workloads.choose_changed(list(reversed(paths)), seed=3)
    assert chosen != workloads.choose_changed(paths, seed=4)
    assert (
        workloads.choose_changed(paths[:10], seed=3)
        and len(workloads.choose_changed(paths[:10], seed=3)) == 1
    )
    assert workloads.choose_changed([], seed=3) == []


def test_change_one_percent_keeps_sizes_and_changes_bytes(tmp_path):
    workloads.generate_workspace(tmp_path / "a", seed=5, **SMALL)
    workloads.generate_workspace(tmp_path / "b", seed=5, **SMALL)
    before = workloads.tree_digest(tmp_path / "a")
    sizes = workloads.tree_size(tmp_path / "a")
    changed_a = workloads.change_one_percent(tmp_path / "a", seed=9)
    changed_b = workloads.change_one_percent(tmp_path / "b", seed=9)
    assert changed_a == changed_b and len(changed_a) == 1
    after = workloads.tree_digest(tmp_path / "a")
    assert workloads.tree_size(tmp_path / "a") == sizes
    assert workloads.compare_digests(before, after) == [
        f"differs: {p} ({before[p][:20]}… != {after[p][:20]}…)" for p in changed_a
    ]
    assert after == workloads.tree_digest(tmp_path / "b")  # same edit for every tool


def test_change_file_on_tiny_and_empty_files(tmp_path):
    tiny, empty = tmp_path / "tiny", tmp_path / "empty"
    tiny.write_bytes(b"abc")
    empty.write_bytes(b"")
    workloads.change_file(tiny, random.Random(0))
    workloads.change_file(empty, random.Random(0))
    assert tiny.read_bytes() == bytes(b ^ 0xFF for b in b"abc")
    assert empty.read_bytes() == b"\n"


def test_compare_digests_names_missing_unexpected_and_links(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x")
    (tmp_path / "src" / "l").symlink_to("f")
    digest = workloads.tree_digest(tmp_path / "src")
    assert digest["l"] == "link:f"
    assert workloads.compare_digests(digest, {"f": digest["f"], "g": "file:00"}) == [
        "unexpected: g",
        "missing: l",
    ]  # sorted by path
    assert workloads.compare_digests(digest, dict(digest)) == []


RESULTS = {
    "a": {
        "push_full": {"ours": 2.0, "s5cmd": 4.0, "rclone": 5.0, "aws": None},
        "push_nochange": {"ours": 0.5, "s5cmd": 0.25, "rclone": 0.25, "aws": 1.0},
        "restore_full": {"ours": None, "s5cmd": 3.0, "rclone": 1.0, "aws": 2.0},
    }
}


def test_ratios_against_the_fastest_peer_that_succeeded():
    ratios = report.compute_ratios(RESULTS)["a"]
    assert ratios["push_full"] == {"ratio": 0.5, "best_peer": "s5cmd", "best_peer_s": 4.0}
    # A tie goes to the first name alphabetically, so the output is stable.
    assert ratios["push_nochange"] == {"ratio": 2.0, "best_peer": "rclone", "best_peer_s": 0.25}
    assert ratios["restore_full"] == {"ratio": None, "best_peer": "rclone", "best_peer_s": 1.0}
    only_ours = report.compute_ratios({"b": {"push_full": {"ours": 1.0}}})
    assert only_ours["b"]["push_full"] == {"ratio": None, "best_peer": None, "best_peer_s": None}


def test_median_or_none():
    assert report.median_or_none([3.0, 1.0, 2.0]) == 2.0
    assert report.median_or_none([1.0, 2.0]) == 1.5
    assert report.median_or_none([1.0, None]) is None
    assert report.median_or_none([]) is None


def test_table_has_a_row_per_step_and_marks_failures():
    ratios = report.compute_ratios(RESULTS)
    table = report.format_table(RESULTS, ratios, ["ours", "s5cmd", "rclone", "aws"])
    lines = table.splitlines()
    assert lines[0].split() == [
        "workload", "step", "ours", "s5cmd", "rclone", "aws", "ours/best", "best", "peer"
    ]  # fmt: skip
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == [
        "a",
        "full",
        "push",
        "2.00",
        "4.00",
        "5.00",
        "FAILED",
        "0.50",
        "s5cmd",
    ]
    assert lines[3].split()[-2:] == ["2.00", "rclone"]
    assert lines[4].split()[-3:] == ["2.00", "-", "rclone"]
    assert len(lines) == 5  # push_1pct was never run: no row
    # Every line lines up: the columns share one width.
    assert len({len(line) for line in lines[:2]}) == 1


def test_table_without_ours_has_no_ratio_column():
    table = report.format_table(RESULTS, {}, ["s5cmd", "rclone"])
    assert "ours/best" not in table
    assert table.splitlines()[2].split() == ["a", "full", "push", "4.00", "5.00"]


def test_json_is_workload_step_tool_seconds_plus_ratios():
    ratios = report.compute_ratios(RESULTS)
    decoded = json.loads(report.to_json(RESULTS, ratios))
    assert decoded["a"]["push_full"]["s5cmd"] == 4.0
    assert decoded["a"]["push_full"]["aws"] is None
    assert decoded["ratios"]["a"]["push_full"]["best_peer"] == "s5cmd"
    assert set(decoded) == {"a", "ratios"}


@pytest.mark.parametrize("fraction,count", [(0.01, 1), (0.5, 2), (1.0, 3)])
def test_choose_changed_fraction(fraction, count):
    assert len(workloads.choose_changed(["x", "y", "z"], seed=0, fraction=fraction)) == count


def test_the_agent_is_ours_too_and_gets_a_ratio_of_its_own():
    results = {
        "b": {
            "push_nochange": {"ours": 1.0, "agent": 0.2, "rclone": 2.0, "s5cmd": 4.0},
            "push_1pct": {"ours": 1.0, "agent": None, "rclone": 2.0},
        }
    }
    ratios = report.compute_ratios(results)["b"]
    # The agent is never the best peer, however fast it is.
    assert ratios["push_nochange"] == {
        "ratio": 0.5,
        "agent_ratio": 0.1,
        "best_peer": "rclone",
        "best_peer_s": 2.0,
    }
    assert ratios["push_1pct"]["agent_ratio"] is None
    tools = ["ours", "agent", "rclone", "s5cmd"]
    lines = report.format_table(results, report.compute_ratios(results), tools).splitlines()
    assert lines[0].split()[-4:] == ["ours/best", "agent/best", "best", "peer"]
    assert lines[2].split()[-3:] == ["0.50", "0.10", "rclone"]
    assert lines[3].split()[-3:] == ["0.50", "-", "rclone"]


def test_floor_lines_give_medians_per_workload():
    sample = {"objects": 40, "object_bytes": 100 * 2**20, "files": 1000, "concurrency": 16}
    floors = {
        "b": [
            {**sample, "s3_seconds": 2.0, "disk_seconds": 1.0},
            {**sample, "s3_seconds": 4.0, "disk_seconds": 5.0},
            {**sample, "s3_seconds": 3.0, "disk_seconds": 2.0},
        ]
    }
    [line] = report.floor_lines(floors)
    assert "workload b" in line
    assert "40 objects (100 MiB" in line and "3.00 s (33 MiB/s)" in line
    assert "1,000 files" in line and "2.00 s (500 files/s)" in line
