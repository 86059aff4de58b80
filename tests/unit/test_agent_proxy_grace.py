"""The editor proxy's grace (agent/proxy_access.py): a token the scheduler allowed for a
notebook is admitted for it while no scheduler answers, for ``authorize_grace_s`` after the
scheduler last confirmed it; nothing else is. A fake scheduler call and a fake clock."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent.client import SchedulerUnavailable
from agent.proxy_access import ALLOWED_TTL_S, Authorizer
from common.config import AgentConfig
from common.errors import ApiError
from common.wire import AuthorizeReply, AuthorizeRequest
from tests.fakes.inventory import FakeClock

GRACE_S = 900.0
GOOD = "nbf_good"
READER = "nbf_reader"


class FakeAsk:
    """The scheduler's ``POST /v1/agents/authorize``: allows ``allowed`` (token → role) for
    every notebook, refuses the rest; ``down`` makes it unreachable, ``answer_4xx`` makes it
    answer the agent itself with that error, ``silent`` (cleared) holds every call until set,
    as a scheduler whose host is gone holds it until the timeout."""

    def __init__(self) -> None:
        self.allowed: dict[str, str] = {GOOD: "operator", READER: "read"}
        self.down = False
        self.answer_4xx: ApiError | None = None
        self.silent = asyncio.Event()
        self.silent.set()
        self.calls: list[AuthorizeRequest] = []

    async def __call__(self, request: AuthorizeRequest) -> AuthorizeReply:
        self.calls.append(request)
        await asyncio.sleep(0)
        await self.silent.wait()
        if self.down:
            raise SchedulerUnavailable("POST /v1/agents/authorize: connection refused")
        if self.answer_4xx is not None:
            raise self.answer_4xx
        role = self.allowed.get(request.token)
        if role is None:
            return AuthorizeReply(allowed=False, reason="unknown or deleted token")
        return AuthorizeReply(allowed=True, role=role)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(now=1000.0)


@pytest.fixture
def ask() -> FakeAsk:
    return FakeAsk()


@pytest.fixture
def authorizer(ask: FakeAsk, clock: FakeClock) -> Authorizer:
    return Authorizer(ask, clock=clock, grace_s=GRACE_S)


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_the_grace_is_an_agent_setting_of_fifteen_minutes() -> None:
    assert AgentConfig().authorize_grace_s == 900.0


async def test_a_verified_token_is_admitted_while_the_scheduler_is_down(
    authorizer: Authorizer, ask: FakeAsk, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.proxy_access")
    assert (await authorizer.check("nb1", GOOD)).allowed
    ask.down = True
    clock.advance(ALLOWED_TTL_S + 1)  # the cached answer ran out: the scheduler is asked
    reply = await authorizer.check("nb1", GOOD)
    assert reply == AuthorizeReply(allowed=True, role="operator")
    assert len(ask.calls) == 2
    # The grace answer is cached like an allowed one: no call per request in an outage.
    assert (await authorizer.check("nb1", GOOD)).allowed and len(ask.calls) == 2
    clock.advance(ALLOWED_TTL_S)
    assert (await authorizer.check("nb1", GOOD)).allowed and len(ask.calls) == 3
    (started,) = messages(caplog, "admitting this token")
    assert started.startswith("notebook=nb1 token=sha256:")
    assert "connection refused" in started and "until 20" in started and "at the latest" in started


async def test_a_token_never_seen_is_503_while_the_scheduler_is_down(
    authorizer: Authorizer, ask: FakeAsk
) -> None:
    assert (await authorizer.check("nb1", GOOD)).allowed
    ask.down = True
    with pytest.raises(SchedulerUnavailable):
        await authorizer.check("nb1", READER)
    # Nor does a token allowed for one notebook vouch for another.
    with pytest.raises(SchedulerUnavailable):
        await authorizer.check("nb2", GOOD)


async def test_the_window_counts_from_the_last_confirmation_and_never_extends(
    authorizer: Authorizer, ask: FakeAsk, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.proxy_access")
    start = clock()
    assert (await authorizer.check("nb1", GOOD)).allowed
    clock.advance(500)
    assert (await authorizer.check("nb1", GOOD)).allowed  # confirmed again at start + 500
    ask.down = True
    clock.now = start + 500 + GRACE_S - 5
    assert (await authorizer.check("nb1", GOOD)).allowed
    # Cached for the allowed time, but not past the window: 5 s left, not 10.
    clock.now = start + 500 + GRACE_S
    with pytest.raises(SchedulerUnavailable):
        await authorizer.check("nb1", GOOD)
    with pytest.raises(SchedulerUnavailable):
        await authorizer.check("nb1", GOOD)
    (ended,) = messages(caplog, "grace of this token ended")
    assert ended.startswith("notebook=nb1 token=sha256:") and "503" in ended


async def test_a_refused_token_is_never_admitted_from_the_grace(
    authorizer: Authorizer, ask: FakeAsk, clock: FakeClock
) -> None:
    assert (await authorizer.check("nb1", GOOD)).allowed
    del ask.allowed[GOOD]  # deleted by its project
    clock.advance(ALLOWED_TTL_S + 1)
    assert not (await authorizer.check("nb1", GOOD)).allowed
    ask.allowed[GOOD] = "operator"  # even if the scheduler went down right after
    ask.down = True
    clock.advance(ALLOWED_TTL_S + 1)
    with pytest.raises(SchedulerUnavailable):
        await authorizer.check("nb1", GOOD)


async def test_an_answer_of_the_schedulers_own_is_never_covered(
    authorizer: Authorizer, ask: FakeAsk, clock: FakeClock
) -> None:
    assert (await authorizer.check("nb1", GOOD)).allowed
    clock.advance(ALLOWED_TTL_S + 1)
    for code, status in (("unauthenticated", 401), ("forbidden", 403)):
        ask.answer_4xx = ApiError(code, "signature refused")
        with pytest.raises(ApiError) as refused:
            await authorizer.check("nb1", GOOD)
        assert refused.value.status == status


async def test_when_the_scheduler_answers_again_revocations_apply_within_the_cache_time(
    authorizer: Authorizer, ask: FakeAsk, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.proxy_access")
    assert (await authorizer.check("nb1", GOOD)).allowed
    assert (await authorizer.check("nb1", READER)).allowed
    ask.down = True
    clock.advance(ALLOWED_TTL_S + 1)
    assert (await authorizer.check("nb1", GOOD)).allowed
    assert (await authorizer.check("nb1", READER)).allowed
    assert len(messages(caplog, "admitting this token")) == 2  # once per token
    ask.down = False
    del ask.allowed[GOOD]
    clock.advance(ALLOWED_TTL_S)
    assert not (await authorizer.check("nb1", GOOD)).allowed
    assert (await authorizer.check("nb1", READER)).allowed
    (back,) = messages(caplog, "the scheduler answers again;")
    assert back.startswith("notebook=nb1 the scheduler answers again")
    # The revoked token lost its grace: the next outage does not admit it.
    ask.down = True
    clock.advance(ALLOWED_TTL_S + 1)
    with pytest.raises(SchedulerUnavailable):
        await authorizer.check("nb1", GOOD)
    assert (await authorizer.check("nb1", READER)).allowed
    # A new outage is logged again.
    assert len(messages(caplog, "admitting this token")) == 3


async def test_concurrent_checks_in_an_outage_share_one_call_and_are_all_admitted(
    authorizer: Authorizer, ask: FakeAsk, clock: FakeClock
) -> None:
    assert (await authorizer.check("nb1", GOOD)).allowed
    ask.down = True
    clock.advance(ALLOWED_TTL_S + 1)
    replies = await asyncio.gather(*(authorizer.check("nb1", GOOD) for _ in range(5)))
    assert all(r.allowed for r in replies) and len(ask.calls) == 2


async def test_the_grace_is_bounded_and_forgets_the_longest_confirmed_first(
    ask: FakeAsk, clock: FakeClock
) -> None:
    authorizer = Authorizer(ask, clock=clock, grace_s=GRACE_S, grace_entries=3)
    for n in range(5):
        assert (await authorizer.check(f"nb{n}", GOOD)).allowed
        clock.advance(1)
    assert len(authorizer.grace) == 3
    ask.down = True
    clock.advance(ALLOWED_TTL_S)
    for n in (0, 1):
        with pytest.raises(SchedulerUnavailable):
            await authorizer.check(f"nb{n}", GOOD)
    for n in (2, 3, 4):
        assert (await authorizer.check(f"nb{n}", GOOD)).allowed


async def test_expired_entries_leave_the_grace_as_new_ones_come(
    authorizer: Authorizer, clock: FakeClock
) -> None:
    assert (await authorizer.check("nb1", GOOD)).allowed
    clock.advance(GRACE_S)
    assert (await authorizer.check("nb2", GOOD)).allowed
    assert len(authorizer.grace) == 1


async def test_no_grace_when_it_is_zero(ask: FakeAsk, clock: FakeClock) -> None:
    authorizer = Authorizer(ask, clock=clock, grace_s=0)
    assert (await authorizer.check("nb1", GOOD)).allowed
    ask.down = True
    clock.advance(ALLOWED_TTL_S + 1)
    with pytest.raises(SchedulerUnavailable):
        await authorizer.check("nb1", GOOD)
    assert len(authorizer.grace) == 0


async def test_in_a_known_outage_a_vouched_token_does_not_wait_out_the_timeout(
    ask: FakeAsk, clock: FakeClock
) -> None:
    authorizer = Authorizer(ask, clock=clock, grace_s=GRACE_S, patience_s=0.01)
    assert (await authorizer.check("nb1", GOOD)).allowed
    ask.down = True
    clock.advance(ALLOWED_TTL_S + 1)
    assert (await authorizer.check("nb1", GOOD)).allowed  # found unreachable: known outage
    ask.silent.clear()  # the scheduler's host is gone: the next question hangs
    clock.advance(ALLOWED_TTL_S)
    assert (await authorizer.check("nb1", GOOD)).allowed
    assert len(ask.calls) == 3  # the question goes on in the background
    # A token nothing vouches for waits for the answer, as before.
    stranger = asyncio.create_task(authorizer.check("nb1", "nbf_stranger"))
    await asyncio.sleep(0.05)
    assert not stranger.done()
    # The scheduler is back and has revoked GOOD: its late answer is cached for the next one.
    ask.down = False
    del ask.allowed[GOOD]
    ask.silent.set()
    assert not (await stranger).allowed
    await asyncio.sleep(0)
    assert not (await authorizer.check("nb1", GOOD)).allowed
    assert len(ask.calls) == 4


async def test_closing_abandons_the_questions_in_flight(ask: FakeAsk, clock: FakeClock) -> None:
    authorizer = Authorizer(ask, clock=clock, grace_s=GRACE_S)
    ask.silent.clear()
    waiting = asyncio.create_task(authorizer.check("nb1", GOOD))
    await asyncio.sleep(0)
    await authorizer.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_notebooks_new_labels_make_every_answer_about_it_asked_again(
    authorizer: Authorizer, ask: FakeAsk, clock: FakeClock
) -> None:
    assert (await authorizer.check("nb1", GOOD)).allowed
    assert (await authorizer.check("nb2", GOOD)).allowed
    assert len(ask.calls) == 2  # cached from now on
    # nb1's labels changed: its token no longer reaches it (the scheduler says so).
    authorizer.forget("nb1")
    ask.allowed.pop(GOOD)
    assert not (await authorizer.check("nb1", GOOD)).allowed
    assert (await authorizer.check("nb2", GOOD)).allowed  # still cached: not its change
    assert [c.notebook for c in ask.calls] == ["nb1", "nb2", "nb1"]
    # Nor does the grace vouch for it any more while the scheduler is down.
    ask.allowed[GOOD] = "operator"
    ask.down = True
    clock.advance(ALLOWED_TTL_S + 1)
    authorizer.forget("nb1")
    with pytest.raises(SchedulerUnavailable):
        await authorizer.check("nb1", GOOD)
    assert (await authorizer.check("nb2", GOOD)).allowed  # vouched for by the grace


async def test_an_answer_asked_before_the_labels_changed_is_not_remembered(
    authorizer: Authorizer, ask: FakeAsk
) -> None:
    ask.silent.clear()
    question = asyncio.create_task(authorizer.check("nb1", GOOD))
    await asyncio.sleep(0.01)
    authorizer.forget("nb1")  # while the question is on its way
    ask.silent.set()
    assert (await question).allowed  # its caller gets the answer to what it asked...
    ask.allowed.pop(GOOD)
    assert not (await authorizer.check("nb1", GOOD)).allowed  # ...the next request asks again
