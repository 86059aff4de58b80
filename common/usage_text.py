"""A usage report as a table of numbers, the same in the CLI (``-o csv``) and the web console's
download."""

from __future__ import annotations

import csv
from typing import TextIO

from common import wire


def gpu_models(report: wire.UsageReport) -> list[str]:
    """Every GPU model with minutes in the report, one column each."""
    models = set(report.total.gpu_minutes)
    for row in report.items:
        models.update(row.gpu_minutes)
    return sorted(models)


def write_csv(report: wire.UsageReport, out: TextIO) -> None:
    """A header row, one row per group, then a ``TOTAL`` row; numbers unformatted."""
    models = gpu_models(report)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "group",
            "notebooks",
            "minutes",
            *(f"gpu_minutes_{m}" for m in models),
            "cpu_minutes",
            "storage_gb_hours",
            "billable_storage_gb_hours",
        ]
    )
    for name, row in [(r.group, r) for r in report.items] + [("TOTAL", report.total)]:
        writer.writerow(
            [
                name,
                row.notebooks,
                row.minutes,
                *(row.gpu_minutes.get(m, 0) for m in models),
                row.cpu_minutes,
                row.storage_gb_hours,
                row.billable_storage_gb_hours,
            ]
        )
