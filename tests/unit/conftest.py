"""Fixtures the unit tests of several modules share."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.unanswering import ProxyWithoutReplicas


@pytest.fixture
def proxies() -> Iterator[Callable[[int], ProxyWithoutReplicas]]:
    """Load balancers with no replica behind them, answering ``status``; closed afterwards."""
    made: list[ProxyWithoutReplicas] = []

    def make(status: int) -> ProxyWithoutReplicas:
        made.append(ProxyWithoutReplicas(status))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()
