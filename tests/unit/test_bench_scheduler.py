"""scripts/bench-scheduler: its pure parts, and one run at a tiny scale against a real scheduler
process. Nothing here asserts a timing; only that every figure was measured and every notebook
was really placed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from bench import scheduler_report as report  # noqa: E402
from bench.scheduler_fleet import gpu_uuid, heartbeat_body, register_body  # noqa: E402
from bench.scheduler_http import HttpError, _parse_head  # noqa: E402
from bench.scheduler_load import shares, split  # noqa: E402
from bench.scheduler_profile import summarize_collapsed, summarize_sql  # noqa: E402

from common import wire  # noqa: E402
from tests.support.postgres import PostgresDatabases, postgres_url  # noqa: E402


def test_percentile_is_nearest_rank():
    samples = [float(n) for n in range(1, 101)]
    assert report.percentile(samples, 50) == 50.0
    assert report.percentile(samples, 99) == 99.0
    assert report.percentile(list(reversed(samples)), 99) == 99.0
    assert report.percentile([7.0], 99) == 7.0
    assert report.percentile([], 50) is None


def test_placement_rate_runs_from_first_submit_to_last_placement():
    rate, elapsed = report.placement_rate([10.5, 11.0, 12.0, 11.5], started=10.0)
    assert elapsed == 2.0
    assert rate == 2.0
    assert report.placement_rate([], started=10.0) == (0.0, 0.0)


def test_statuses_from_several_processes_are_summed():
    merged = report.merge_statuses([{200: 3, 503: 1}, {"200": 2}])
    assert merged == {"200": 5, "503": 1}


def test_table_shows_goals_and_ratios_and_json_has_the_headline():
    figures = {
        "placements_per_s": 250.0,
        "heartbeats_per_s": 10_000.0,
        "get_p50_ms": 12.5,
        "get_p99_ms": 40.0,
        "post_p50_ms": None,
        "post_p99_ms": None,
        "notebooks": 5000,
        "hosts": 1000,
        "clients": 200,
    }
    table = report.format_table(figures)
    rows = {line.split("  ")[0]: line for line in table.splitlines()}
    placements = next(line for key, line in rows.items() if key.startswith("placements/s"))
    assert placements.split()[-3:] == ["250.0", "500", "0.50"]
    heartbeats = next(line for key, line in rows.items() if key.startswith("heartbeats"))
    assert heartbeats.split()[-1] == "2.00"
    assert "5,000 notebooks" in table and "1,000 agents" in table and "200 clients" in table
    out = json.loads(report.to_json(figures))
    assert set(report.HEADLINE) <= set(out)
    assert out["ratios"] == {"placements_per_s": 0.5, "heartbeats_per_s": 2.0}


def test_reply_heads_are_parsed_and_garbage_refused():
    head = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n"
    assert _parse_head(head) == (201, 17, False, False)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    assert _parse_head(chunked) == (200, 0, True, True)
    with pytest.raises(HttpError):
        _parse_head(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_simulated_hosts_send_valid_agent_bodies_naming_their_gpus():
    registered = wire.decode(
        register_body("h1", gpus=8, cpus=128, memory_mb=1000), wire.AgentRegister
    )
    beat = wire.decode(heartbeat_body("h1", gpus=8), wire.Heartbeat)
    assert [g.uuid for g in registered.gpus] == [g.uuid for g in beat.gpus]
    assert len({g.uuid for g in registered.gpus}) == 8
    assert gpu_uuid("h1", 0) != gpu_uuid("h2", 0)
    assert heartbeat_body("h1", gpus=8) == heartbeat_body("h1", gpus=8)


def test_collapsed_stacks_summary(tmp_path):
    stacks = tmp_path / "heartbeats.txt"
    stacks.write_text(
        "process 1:python;run (scheduler/main.py:70);heartbeat (scheduler/hosts.py:40) 3\n"
        "process 1:python;run (scheduler/main.py:70);verify (common/auth.py:90) 1\n"
    )
    summary = summarize_collapsed(stacks)
    assert "4 samples" in summary
    assert "75.0%  heartbeat (scheduler/hosts.py)" in summary
    assert "100.0%  run (scheduler/main.py)" in summary


def test_sql_summary_ranks_statements_by_time():
    summary = summarize_sql(
        "post", {"COMMIT": [10, 0.001], "SELECT   SUM(gpu)\n FROM notebooks": [4, 0.008]}
    )
    lines = summary.splitlines()
    assert lines[0] == "SQL during post: 0.01s in sqlite, top statements by time:"
    assert lines[1].split() == ["0.01s", "4x", "2000us", "SELECT", "SUM(gpu)", "FROM", "notebooks"]
    assert lines[2].split()[-1] == "COMMIT"


def test_work_is_split_round_robin_over_load_processes():
    assert split(list(range(7)), 3) == [[0, 3, 6], [1, 4], [2, 5]]
    assert split([1], 4) == [[1]]
    assert shares(200, 3) == [67, 67, 66]
    assert sum(shares(5, 2)) == 5


def test_tiny_run_measures_every_figure_and_places_every_notebook():
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench-scheduler"),
            "--hosts",
            "5",
            "--notebooks",
            "20",
            "--clients",
            "5",
            "--duration",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    figures = json.loads(done.stdout)
    for key in report.HEADLINE:
        assert isinstance(figures[key], float) and figures[key] > 0, (key, figures[key])
    assert figures["notebooks_placed"] == 20
    assert figures["gpus_reserved"] == 20
    assert figures["statuses"]["placements"] == {"201": 20}
    assert figures["hosts"] == 5 and figures["load_processes"] >= 1
    assert figures["problems"] == []


def test_tiny_run_on_two_replicas_over_postgresql_places_every_notebook_once():
    """Two replicas on a database of the test cluster (``--database-url``): every notebook is
    placed, none twice, and the report says what ran."""
    databases = PostgresDatabases(postgres_url())
    try:
        url = databases.empty()
        done = subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts" / "bench-scheduler"),
                *("--database-url", url, "--replicas", "2"),
                *("--hosts", "6", "--notebooks", "24", "--clients", "4", "--duration", "1"),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=REPO,
        )
    finally:
        databases.close()
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    figures = json.loads(done.stdout)
    assert (figures["database"], figures["replicas"]) == ("postgresql", 2)
    assert figures["notebooks_placed"] == figures["gpus_reserved"] == 24
    assert figures["statuses"]["placements"] == {"201": 24}
    assert figures["problems"] == [] and not figures["scheduler_log_errors"]
