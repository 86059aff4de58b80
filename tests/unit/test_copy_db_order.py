"""The order copy-db inserts a self-referencing table's rows in: each after the row it names."""

from __future__ import annotations

import pytest

from scheduler.copy_db import CopyRefused, _parents_first

COLUMNS = ["id", "fork_notebook"]
REFS = [("fork_notebook", "id")]


def order(rows: list[tuple[str, str | None]]) -> list[str]:
    return [row[0] for row in _parents_first(rows, COLUMNS, REFS)]


def test_rowid_order_is_kept_where_it_already_holds() -> None:
    assert order([("a", None), ("b", "a"), ("c", None), ("d", "b")]) == ["a", "b", "c", "d"]


def test_a_row_waits_for_the_row_it_names() -> None:
    # d forks b, b forks a, and both came before a in rowid order (a rebuilt table).
    rows = [("d", "b"), ("b", "a"), ("c", None), ("a", None), ("e", "x-deleted")]
    assert order(rows) == ["c", "a", "b", "d", "e"]


def test_a_cycle_is_refused() -> None:
    with pytest.raises(CopyRefused, match="cycle"):
        order([("a", "b"), ("b", "a")])
