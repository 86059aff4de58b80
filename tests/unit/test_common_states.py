import pytest

from common.states import (
    ACTIVE,
    SETTLED,
    STARTABLE,
    STOPPABLE,
    TRANSITIONS,
    InvalidTransition,
    NotebookState,
    check,
)

S = NotebookState


def test_every_state_has_a_row():
    assert set(TRANSITIONS) == set(S)


def test_lifecycle_path_is_allowed():
    path = [
        S.STARTING,
        S.RUNNING,
        S.STOPPING,
        S.STOPPED,
        S.STARTING,
        S.RUNNING,
        S.STOPPING,
        S.STOPPED,
        S.DELETING,
        S.DELETED,
    ]
    for current, target in zip(path, path[1:], strict=False):
        assert check(current, target) is True


def test_repeat_is_idempotent_not_an_error():
    for state in S:
        assert check(state, state) is False


@pytest.mark.parametrize(
    "current,target",
    [
        (S.STOPPED, S.RUNNING),  # must go through STARTING
        (S.STOPPED, S.STOPPING),
        (S.RUNNING, S.STARTING),
        (S.RUNNING, S.STOPPED),  # the workspace push in STOPPING cannot be skipped
        (S.DELETED, S.STARTING),
        (S.DELETING, S.RUNNING),
    ],
)
def test_forbidden_transitions_raise(current, target):
    with pytest.raises(InvalidTransition) as info:
        check(current, target)
    assert info.value.current == current and info.value.target == target
    assert str(current) in str(info.value)


def test_deleted_is_terminal():
    assert TRANSITIONS[S.DELETED] == frozenset()


def test_quota_counts_only_starting_and_running():
    assert ACTIVE == {S.STARTING, S.RUNNING}


def test_user_actions_match_the_table():
    for state in STARTABLE:
        # A start places the notebook or, with no room, queues it.
        assert {S.STARTING, S.QUEUED} <= TRANSITIONS[state]
    for state in STOPPABLE - {S.QUEUED}:
        assert S.STOPPING in TRANSITIONS[state]
    # A queued notebook holds nothing: stopping it just takes it out of the queue.
    assert S.STOPPED in TRANSITIONS[S.QUEUED]
    assert not (SETTLED & ACTIVE)
    assert S.QUEUED not in ACTIVE


def test_host_tables_cover_every_state_and_follow_the_diagram() -> None:
    from common.states import HOST_INTENT_TRANSITIONS, HOST_TRANSITIONS, HostIntent, HostState

    assert set(HOST_TRANSITIONS) == set(HostState)
    assert set(HOST_INTENT_TRANSITIONS) == set(HostIntent)
    assert check(HostState.READY, HostState.LOST) and check(HostState.LOST, HostState.READY)
    assert not check(HostState.READY, HostState.READY)  # an agent that registers again
    assert not check(HostIntent.CORDONED, HostIntent.CORDONED)  # a second cordon
    # A drain ends cordoned, never open: uncordoning is the operator's decision.
    assert check(HostIntent.DRAINING, HostIntent.CORDONED)
    assert check(HostIntent.OPEN, HostIntent.DRAINING)
    # The tables are per kind: a notebook state is no host state.
    with pytest.raises((InvalidTransition, KeyError, TypeError)):
        check(HostState.READY, NotebookState.RUNNING)
