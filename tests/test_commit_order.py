"""Only contiguous acknowledged offsets are committed (the class of faust-streaming #606).

The worker's guarantee rests on two things: Faust's consumer commits up to the first gap in the
acked offsets, and each agent runs with concurrency=1 so batches are acked in order. Both are
checked here, so an upgrade of Faust or a config change that breaks either fails the suite."""

from collections import defaultdict
from types import SimpleNamespace

from faust.transport.consumer import Consumer
from intervaltree import IntervalTree

from streams.app import app

TP = ("orders.notes", 0)


def _consumer_state(acked, committed):
    return SimpleNamespace(_acked=defaultdict(list, {TP: list(acked)}), _gap=defaultdict(IntervalTree),
                           _committed_offset=defaultdict(lambda: None, {TP: committed}),
                           _acked_index=defaultdict(set, {TP: set(acked)}))


def test_commit_stops_at_the_first_gap():
    state = _consumer_state([34, 35, 36, 40, 41, 42], committed=33)
    assert Consumer._new_offset(state, TP) == 37  # 37..39 still in flight: not committed


def test_nothing_committed_while_the_head_is_missing():
    state = _consumer_state([36, 37, 38], committed=33)  # 34 and 35 not yet acked
    assert Consumer._new_offset(state, TP) is None


def test_every_agent_runs_one_batch_at_a_time():
    agents = list(app.agents.values())
    assert agents and all(agent.concurrency == 1 for agent in agents)
