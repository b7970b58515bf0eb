"""The stall detector behind /readyz: a partition is stalled when it has lag and has not
advanced for `after_s`; a partition without lag, or one that advances, is not."""

from __future__ import annotations

import time

from streams.source.base import ConsumerState
from streams.records import InRecord


def state_with(lag: dict, assigned_ago: float) -> ConsumerState:
    state = ConsumerState()
    state.assigned = sorted(lag)
    state.lag = dict(lag)
    state.assigned_at = time.monotonic() - assigned_ago
    return state


def test_a_partition_with_lag_that_never_moved_is_stalled():
    state = state_with({("t", 0): 5, ("t", 1): 0}, assigned_ago=10)
    assert state.stalled(5) == ["t[0]"]  # t[1] has no lag: idle, not stalled
    assert state.stalled(30) == []  # not for long enough


def test_progress_clears_a_stall_and_its_age_counts_from_the_last_move():
    state = state_with({("t", 0): 5}, assigned_ago=10)
    state.advance([InRecord("t", 0, 41, None, b"k", b"v")])
    assert state.stalled(5) == []
    assert state.progress[("t", 0)][0] == 42
    state.progress[("t", 0)] = (42, time.monotonic() - 6)
    assert state.stalled(5) == ["t[0]"]


def test_records_taken_and_not_committed_for_too_long_are_a_stall_even_without_lag_figures():
    """While the loop waits out a dependency it does not poll, so librdkafka's statistics
    (the lag) stop: a batch held too long is a stall by itself."""
    state = state_with({}, assigned_ago=10)
    state.assigned = [("t", 0), ("t", 1)]
    state.taken([InRecord("t", 0, 7, None, b"k", b"v")])
    state.pending[("t", 0)] -= 6
    assert state.stalled(5) == ["t[0]"]
    state.advance([InRecord("t", 0, 7, None, b"k", b"v")])
    assert state.stalled(5) == [] and not state.pending
