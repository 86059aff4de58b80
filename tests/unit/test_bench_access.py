"""scripts/bench-access: its pure parts, and one tiny run against a real scheduler, agent and
stand-in editor. Nothing here asserts a timing; only that every figure was measured on both
paths and that the verdict follows the download ratio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from bench import access_report as report  # noqa: E402

SETTINGS = {
    "requests": 500,
    "download_mib": 256,
    "download_client": "curl",
    "ws_small_bytes": 1024,
    "ws_large_mib": 1,
}


def samples(direct_mb_s: list[float], stable_mb_s: list[float]) -> dict:
    return {
        "direct": {
            "small_get_p50_ms": [1.0, 1.2, 0.9],
            "small_get_p99_ms": [2.0, 2.0, 9.0],
            "download_mb_per_s": direct_mb_s,
            "ws_small_round_trips_per_s": [2000.0, 2100.0, 1900.0],
        },
        "stable": {
            "small_get_p50_ms": [2.0, 2.5, 2.2],
            "small_get_p99_ms": [4.0, 5.0, 30.0],
            "download_mb_per_s": stable_mb_s,
            "ws_small_round_trips_per_s": [1000.0, 1050.0, None],
        },
    }


def test_latency_is_nearest_rank_percentiles_in_ms():
    seconds = [n / 1000 for n in range(1, 101)]
    figures = report.latency_ms(list(reversed(seconds)))
    assert figures["small_get_p50_ms"] == 50.0
    assert figures["small_get_p99_ms"] == 99.0
    assert report.latency_ms([]) == {"small_get_p50_ms": None, "small_get_p99_ms": None}


def test_throughput_is_in_decimal_megabytes():
    assert report.mb_per_s(256 * 1024 * 1024, 1.0) == 268.435456
    assert report.mb_per_s(1, 0.0) == 0.0


def test_figures_are_medians_of_the_repetitions_and_ratios_stable_over_direct():
    summary = report.summarize(samples([800.0, 700.0, 900.0], [400.0, 350.0, 500.0]))
    assert summary["small_get_p50_ms"] == {"direct": 1.0, "stable": 2.2, "ratio": 2.2}
    assert summary["small_get_p99_ms"]["ratio"] == 2.5
    assert summary["download_mb_per_s"] == {"direct": 800.0, "stable": 400.0, "ratio": 0.5}
    # A missing repetition is left out, not counted as zero.
    assert summary["ws_small_round_trips_per_s"]["stable"] == 1025.0
    # A figure measured on neither path has no ratio.
    assert summary["ws_large_mb_per_s"] == {"direct": None, "stable": None, "ratio": None}


def test_the_download_verdict_is_at_least_half_as_fast():
    exactly_half = report.summarize(samples([800.0], [400.0]))
    assert report.download_at_least_half(exactly_half) is True
    slower = report.summarize(samples([800.0], [399.0]))
    assert report.download_at_least_half(slower) is False
    assert "LESS THAN half as fast" in report.verdict_line(slower)
    unmeasured = report.summarize({"direct": {}, "stable": {}})
    assert report.download_at_least_half(unmeasured) is None
    assert report.verdict_line(unmeasured).endswith("not measured")


def test_table_has_one_row_per_figure_and_the_verdict():
    summary = report.summarize(samples([800.0, 700.0, 900.0], [400.0, 350.0, 500.0]))
    table = report.format_table(summary, SETTINGS)
    lines = table.splitlines()
    assert lines[0].split() == ["figure", "unit", "direct", "stable", "URL", "stable/direct"]
    rows = {line.split("  ")[0].strip(): line.split() for line in lines[2:] if line}
    assert rows["small GET p50 (500 sequential)"][-3:] == ["1.00", "2.20", "2.20"]
    assert rows["download 256 MiB (curl)"][-3:] == ["800", "400", "0.50"]
    assert rows["WebSocket 1 MiB echo"][-3:] == ["-", "-", "-"]
    assert len(lines) == 2 + len(report.FIGURES) + 2
    assert lines[-1].startswith("download through the stable URL: 0.50 x direct, at least half")


def test_json_has_figures_verdict_and_repetitions():
    out = json.loads(
        report.to_json(samples([800.0], [300.0]), SETTINGS, {"cpus": 2, "commit": "abc"})
    )
    assert out["figures"]["download_mb_per_s"]["ratio"] == 0.375
    assert out["download_at_least_half"] is False
    assert out["repetitions"]["stable"]["download_mb_per_s"] == [300.0]
    assert out["settings"] == SETTINGS and out["cpus"] == 2


def test_tiny_run_measures_every_figure_on_both_paths():
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench-access"),
            "--repeats",
            "1",
            "--requests",
            "20",
            "--download-mib",
            "4",
            "--ws-small-messages",
            "20",
            "--ws-large-messages",
            "4",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    out = json.loads(done.stdout)
    for key, _, _ in report.FIGURES:
        figure = out["figures"][key]
        assert figure["direct"] is not None and figure["stable"] is not None, key
        assert figure["ratio"] is not None and figure["ratio"] > 0, key
    assert isinstance(out["download_at_least_half"], bool)
    assert out["repetitions"]["direct"]["download_mb_per_s"][0] > 0
