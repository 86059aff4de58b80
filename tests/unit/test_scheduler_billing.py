"""The ledger's arithmetic: minutes inside a period, storage GB-hours with the free tier."""

from __future__ import annotations

import pytest

from scheduler.billing import minutes_within, storage_gb_hours

DAY = 86400.0


def test_minutes_of_a_run_are_split_between_adjacent_periods_without_overlap() -> None:
    started, billed = 1000.0, 10  # minutes begin at 1000, 1060, ..., 1540
    assert minutes_within(started, billed, 0, 10_000) == 10
    assert minutes_within(started, billed, 0, 1000) == 0
    assert minutes_within(started, billed, 0, 1001) == 1  # the first minute began at 1000
    cut = 1234.0
    assert minutes_within(started, billed, 0, cut) + minutes_within(started, billed, cut, 9e9) == 10
    assert minutes_within(started, billed, 1540, 1541) == 1
    assert minutes_within(started, billed, 1541, 9e9) == 0
    assert minutes_within(started, 0, 0, 9e9) == 0


def test_storage_is_free_up_to_10_gb_for_30_days() -> None:
    created = 0.0
    sizes = [(0.0, 25 * 10**9)]  # 25 GB from creation on
    total, billable = storage_gb_hours(
        sizes, created_at=created, until=40 * DAY, start=0, end=40 * DAY, free_gb=10, free_days=30
    )
    assert total == pytest.approx(25 * 40 * 24)
    # 30 days at 15 billable GB, then 10 days at 25 GB
    assert billable == pytest.approx(15 * 30 * 24 + 25 * 10 * 24)


def test_storage_follows_each_snapshot_and_stops_at_deletion() -> None:
    sizes = [(0.0, 5 * 10**9), (DAY, 12 * 10**9)]
    total, billable = storage_gb_hours(
        sizes, created_at=0, until=2 * DAY, start=0, end=10 * DAY, free_gb=10, free_days=30
    )
    assert total == pytest.approx(5 * 24 + 12 * 24)
    assert billable == pytest.approx(2 * 24)
    # a period inside the second snapshot's life
    total, _ = storage_gb_hours(
        sizes, created_at=0, until=2 * DAY, start=1.5 * DAY, end=3 * DAY, free_gb=10, free_days=30
    )
    assert total == pytest.approx(12 * 12)
