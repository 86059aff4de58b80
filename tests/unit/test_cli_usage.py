"""`nbfleet quota`, `nbfleet usage` and `nbfleet admin usage` against the stand-in's canned
fleet: request shape, the three output formats, and the errors."""

from __future__ import annotations

import csv
import io
import json
import re
from urllib.parse import parse_qs, urlsplit

import pytest

from cli.main import main
from tests.fakes.stand_in_scheduler import cli_against


@pytest.fixture
def server(monkeypatch, tmp_path):
    stand_in = cli_against(monkeypatch, tmp_path)
    stand_in.serve_fleet()
    yield stand_in
    stand_in.close()


def request(server, index: int = -1) -> tuple[str, str, dict[str, list[str]]]:
    method, target, _, _ = server.calls[index]
    url = urlsplit(target)
    return method, url.path, parse_qs(url.query)


def rows(out: str) -> dict[str, list[str]]:
    """Table lines keyed by their first cell (cells are at least two spaces apart)."""
    cells = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if line.strip()]
    return {row[0]: row[1:] for row in cells}


def test_quota_shows_limits_use_and_queue(server, capsys) -> None:
    assert main(["quota"]) == 0
    assert request(server)[:2] == ("GET", "/v1/quota")
    out = capsys.readouterr().out
    assert "Project: vision" in out
    table = rows(out)
    assert table["GPUs"] == ["3", "4"]
    assert table["CPUs"] == ["36", "48"]
    assert table["Notebooks"] == ["2", "10"]
    assert "GPUs per notebook            4" in out
    assert "Queued notebooks: 1" in out


def test_quota_json(server, capsys) -> None:
    assert main(["quota", "-o", "json"]) == 0
    project = json.loads(capsys.readouterr().out)
    assert project["quota"]["gpus"] == 4 and project["used"]["gpus"] == 3


def test_usage_asks_the_tokens_project_first(server, capsys) -> None:
    assert main(["usage"]) == 0
    assert request(server, 0)[:2] == ("GET", "/v1/quota")
    method, path, query = request(server, 1)
    assert (method, path) == ("GET", "/v1/projects/vision/usage")
    # No --from/--to: the scheduler's defaults (start of the month, now) apply.
    assert query == {"group_by": ["notebook"]}
    out = capsys.readouterr().out
    assert out.startswith("Usage of project vision, 2026-11-01 00:00 to 2026-11-21 00:00 UTC\n")
    table = rows(out)
    assert table["NOTEBOOK"] == [
        "NOTEBOOKS",
        "MINUTES",
        "GPU-MIN H100",
        "GPU-MIN L4",
        "CPU-MIN",
        "STORAGE GB-H",
        "BILLABLE GB-H",
    ]
    assert table["nb-1"] == ["1", "1,250", "1,250", "0", "0", "9,840.5", "5,040.5"]
    assert table["nb-3"] == ["1", "4,000", "0", "0", "16,000", "250.2", "0.0"]
    assert table["TOTAL"] == ["3", "5,550", "1,250", "600", "16,000", "11,290.8", "5,040.5"]


def test_usage_with_project_period_and_grouping(server, capsys) -> None:
    argv = ["usage", "--project", "vision", "--from", "2026-11-01", "--to", "1795219200"]
    assert main([*argv, "--group-by", "label", "--label-key", "team"]) == 0
    assert len(server.calls) == 1  # --project given: no need to ask whose token it is
    _, path, query = request(server)
    assert path == "/v1/projects/vision/usage"
    assert query == {
        "group_by": ["label"],
        "label_key": ["team"],
        "from": ["2026-11-01"],
        "to": ["1795219200"],
    }
    table = rows(capsys.readouterr().out)
    assert table["LABEL team"][:2] == ["NOTEBOOKS", "MINUTES"]
    assert table["team=cv"][:4] == ["2", "1,550", "1,250", "600"]


def test_usage_csv_has_a_column_per_gpu_model_and_a_total_row(server, capsys) -> None:
    assert main(["usage", "--group-by", "flavor", "-o", "csv"]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert table[0] == [
        "group",
        "notebooks",
        "minutes",
        "gpu_minutes_H100",
        "gpu_minutes_L4",
        "cpu_minutes",
        "storage_gb_hours",
        "billable_storage_gb_hours",
    ]
    assert [r[0] for r in table[1:]] == ["h100-1-gpu", "l4-1-gpu", "ai1-1-cpu", "TOTAL"]
    assert table[2] == ["l4-1-gpu", "1", "300", "0", "600", "0", "1200.0", "0.0"]
    assert table[-1] == ["TOTAL", "3", "5550", "1250", "600", "16000", "11290.75", "5040.5"]


def test_usage_json_is_the_report_as_is(server, capsys) -> None:
    assert main(["usage", "-o", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["group_by"] == "notebook"
    assert [r["group"] for r in report["items"]] == ["nb-1", "nb-2", "nb-3"]
    assert report["total"]["gpu_minutes"] == {"H100": 1250, "L4": 600}


def test_group_by_label_without_label_key_is_a_usage_error(server, capsys) -> None:
    assert main(["usage", "--group-by", "label"]) == 2
    assert "--label-key" in capsys.readouterr().err
    assert server.calls == []


def test_label_key_without_group_by_label_is_a_usage_error(server, capsys) -> None:
    assert main(["admin", "usage", "--label-key", "team"]) == 2
    assert "--label-key only applies to --group-by label" in capsys.readouterr().err
    assert server.calls == []


def test_a_time_the_scheduler_cannot_read_is_its_error(server, capsys) -> None:
    assert main(["usage", "--project", "vision", "--from", "yesterday"]) == 1
    assert "'yesterday' is neither unix seconds nor ISO 8601" in capsys.readouterr().err


def test_project_group_is_only_for_operators(server, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["usage", "--group-by", "project"])
    assert exit_.value.code == 2
    assert server.calls == []


def test_admin_usage_groups_by_project_by_default(server, capsys) -> None:
    assert main(["admin", "usage"]) == 0
    method, path, query = request(server)
    assert (method, path, query) == ("GET", "/v1/admin/usage", {"group_by": ["project"]})
    out = capsys.readouterr().out
    assert out.startswith("Usage of all projects, ")
    table = rows(out)
    assert table["vision"][:2] == ["3", "5,550"] and table["nlp"][:2] == ["0", "0"]
    assert table["TOTAL"][:2] == ["3", "5,550"]


def test_admin_usage_of_one_project(server, capsys) -> None:
    assert main(["admin", "usage", "--project", "vision", "--group-by", "notebook"]) == 0
    _, _, query = request(server)
    assert query == {"group_by": ["notebook"], "project": ["vision"]}
    out = capsys.readouterr().out
    assert out.startswith("Usage of project vision, ")
    assert set(rows(out)) >= {"nb-1", "nb-2", "nb-3", "TOTAL"}


def test_admin_usage_of_an_unknown_project(server, capsys) -> None:
    assert main(["admin", "usage", "--project", "ghost"]) == 1
    assert "project ghost does not exist" in capsys.readouterr().err
