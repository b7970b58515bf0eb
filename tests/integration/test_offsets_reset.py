"""`streams offsets reset` end to end against the embedded broker: a group that consumed and
committed two windows of records is rewound to the start of the second window.

What the embedded tansu broker (0.6.0) answers, measured with confluent-kafka 2.16.1, and what
these tests therefore rely on:
- librdkafka's describe_consumer_groups sends ConsumerGroupDescribe (the KIP-848 API, which
  tansu advertises). For a classic group tansu answers it with no error, an empty member list
  and the leader's member id in the assignor field (real Kafka answers GROUP_ID_NOT_FOUND, and
  librdkafka then describes the group with DescribeGroups, members included). Known broker bug,
  noted here: the member list cannot be tested. The state is right: STABLE while a librdkafka
  member is in the group, EMPTY once it has closed, "Unknown"/"Assigning" (UNKNOWN to the
  client) during a rebalance, EMPTY for a group it never saw. `streams offsets reset` refuses
  unless the state is EMPTY or DEAD, as kafka-consumer-groups does, so the refusal is tested
  for real here.
- A member that dies without leaving (SIGKILL), or an aiokafka consumer that stops cleanly,
  stays in the group, STABLE, until another member joins: tansu does not expire it after the
  session timeout as Kafka does. Known broker bug: after a killed worker the command keeps
  refusing on this broker; nothing here builds on that.
- AlterConsumerGroupOffsets while a member is in the group fails per partition with
  UNKNOWN_MEMBER_ID, as on real Kafka: tested as the guard against a member joining between
  the check and the write.
- The "DescribeGroups stops answering" seen earlier was not the broker: the command dropped its
  AdminClient before the answer came, and a dropped client never completes its futures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from confluent_kafka import ConsumerGroupState, Producer, TopicPartition

from streams import replay as rp
from streams.kafka import consumer, ensure_topics
from tests.fixtures.kafka_io import Scenario, WorkerProcess, collect

pytestmark = pytest.mark.integration
HOUR = 3600 * 1000
PARTITIONS = 4
# Uneven on purpose: window A puts 6, 6, 5, 5 records on partitions 0..3, window B 4 on each.
WINDOW_A, WINDOW_B = 22, 16


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()


def _cli(scenario: Scenario, *args: str) -> subprocess.CompletedProcess:
    """The command in a subprocess; stdout with rich's line wrapping undone."""
    done = subprocess.run([sys.executable, "-m", "streams", *args], env=os.environ | scenario.env,
                          capture_output=True, text=True, timeout=120)
    done.stdout = " ".join(done.stdout.split())
    return done


def _produce_windows(scenario: Scenario) -> dict:
    """Window A one hour before window B; each window flushed on its own (separate batches).
    Returns B's start time, each partition's first B offset and end offset."""
    settings = scenario.settings
    ensure_topics(settings)
    now = int(time.time() * 1000)
    stamps = {"a": now - 2 * HOUR, "b": now - HOUR}
    prod = Producer(settings.librdkafka_config() | {"acks": "all"})
    b_start, end = {}, {}
    for prefix, count in (("a", WINDOW_A), ("b", WINDOW_B)):
        for i in range(count):
            p = i % PARTITIONS
            eid = f"{prefix}-{i}"
            prod.produce(scenario.input, partition=p, key=eid.encode(), timestamp=stamps[prefix] + i,
                         value=json.dumps({"event_id": eid, "text": "my parcel has not arrived"}).encode())
            end[p] = end.get(p, 0) + 1
        assert prod.flush(30) == 0
        if prefix == "a":
            b_start = dict(end)
    assert b_start == {0: 6, 1: 6, 2: 5, 3: 5} and end == {0: 10, 1: 10, 2: 9, 3: 9}
    return {"b_time": stamps["b"], "b_start": b_start, "end": end}


def _committed(scenario: Scenario, group: str) -> dict[int, int]:
    got = rp.committed_offsets(scenario.settings, group,
                               [TopicPartition(scenario.input, p) for p in range(PARTITIONS)])
    return {p: o for (_, p), o in got.items()}


def _join(scenario: Scenario, group: str):
    """A librdkafka member of `group`, subscribed and assigned (session timeout 6 s), and the
    keys of the records it read while joining."""
    member = consumer(scenario.settings, group)
    member.subscribe([scenario.input])
    keys: list[str] = []
    deadline = time.monotonic() + 30
    while not member.assignment() and time.monotonic() < deadline:
        keys += [m.key().decode() for m in member.consume(100, 0.2) if not m.error()]
    assert member.assignment(), "the member was not assigned partitions"
    return member, keys


def _read(member, keys: list[str], want: int, timeout: float = 20) -> list[str]:
    keys = list(keys)
    deadline = time.monotonic() + timeout
    while len(keys) < want and time.monotonic() < deadline:
        for msg in member.consume(100, 0.3):
            if not msg.error():
                keys.append(msg.key().decode())
    return keys


def _consumed_all(scenario: Scenario, windows: dict) -> str:
    """A fresh group that has read and committed everything, then left cleanly."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    member, early = _join(scenario, group)
    try:
        assert len(_read(member, early, WINDOW_A + WINDOW_B)) == WINDOW_A + WINDOW_B
        member.commit(asynchronous=False)
    finally:
        member.close()
    assert _committed(scenario, group) == windows["end"]
    return group


@pytest.fixture(scope="module")
def windows(broker, tiny_models, model_cache, tmp_path_factory):
    scenario = Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path_factory.mktemp("offsets"))
    return scenario, _produce_windows(scenario)


def _reset(scenario: Scenario, group: str, when_ms: int, *extra: str) -> subprocess.CompletedProcess:
    return _cli(scenario, "offsets", "reset", "--group", group, "--topic", scenario.input,
                "--to-datetime", _iso(when_ms), *extra)


def test_dry_run_prints_the_plan_and_changes_nothing(windows):
    scenario, w = windows
    group = _consumed_all(scenario, w)
    dry = _reset(scenario, group, w["b_time"] - 60_000, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    for p in range(PARTITIONS):
        assert f"{scenario.input}[{p}]: {w['end'][p]} -> {w['b_start'][p]}" in dry.stdout
    assert "dry run" in dry.stdout
    assert _committed(scenario, group) == w["end"]


def test_reset_rewinds_to_the_window_start_and_the_group_resumes_there(windows):
    scenario, w = windows
    group = _consumed_all(scenario, w)
    run = _reset(scenario, group, w["b_time"] - 60_000)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"group {group}: {PARTITIONS} partition offsets reset" in run.stdout
    assert _committed(scenario, group) == w["b_start"]
    member, early = _join(scenario, group)  # the group resumes at window B, and only window B
    try:
        keys = _read(member, early, WINDOW_B + 1, timeout=5)
    finally:
        member.close()
    assert sorted(keys) == sorted(f"b-{i}" for i in range(WINDOW_B))


def test_times_inside_and_after_the_data(windows):
    """Mid-window: the first record at/after the time on each partition. After every record
    (and on this broker ListOffsets answers 0 for a future time): each partition's end."""
    scenario, w = windows
    group = _consumed_all(scenario, w)
    # B's records carry b_time + i on partition i % 4: b_time + 5 is b-5 on partition 1, then
    # b-6, b-7 on partitions 2, 3; partition 0's next is b-8.
    mid = _reset(scenario, group, w["b_time"] + 5, "--dry-run")
    assert mid.returncode == 0, mid.stdout + mid.stderr
    expected = {0: w["b_start"][0] + 2, 1: w["b_start"][1] + 1, 2: w["b_start"][2] + 1, 3: w["b_start"][3] + 1}
    for p, offset in expected.items():
        assert f"{scenario.input}[{p}]: {w['end'][p]} -> {offset}" in mid.stdout
    group_at_start = f"g-{uuid.uuid4().hex[:8]}"  # a group that never committed anything
    late = _reset(scenario, group_at_start, int(time.time() * 1000) + HOUR)
    assert late.returncode == 0, late.stdout + late.stderr
    assert f"{scenario.input}[0]: none -> {w['end'][0]}" in late.stdout
    assert _committed(scenario, group_at_start) == w["end"]


def test_refuses_while_a_member_is_active_then_resets_once_it_left(windows):
    scenario, w = windows
    group = _consumed_all(scenario, w)
    member, _ = _join(scenario, group)
    try:
        described = rp._describe_group(scenario.settings, group)
        assert described.state == ConsumerGroupState.STABLE  # (members: [] on tansu, see above)
        for extra in ((), ("--dry-run",)):
            refused = _reset(scenario, group, w["b_time"] - 60_000, *extra)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert "is active (state STABLE" in refused.stdout and "stop its workers" in refused.stdout
            assert "->" not in refused.stdout  # refused before planning anything
        assert _committed(scenario, group) == w["end"]
    finally:
        member.close()
    assert rp._describe_group(scenario.settings, group).state == ConsumerGroupState.EMPTY
    run = _reset(scenario, group, w["b_time"] - 60_000)
    assert run.returncode == 0, run.stdout + run.stderr
    assert _committed(scenario, group) == w["b_start"]


def test_the_broker_refuses_the_write_when_a_member_joined_after_the_check(windows):
    """The describe-then-write race: reset_offsets itself turns the coordinator's refusal
    (UNKNOWN_MEMBER_ID, on real Kafka and on tansu) into GroupActiveError, not a silent
    success with per-partition errors."""
    scenario, w = windows
    group = _consumed_all(scenario, w)
    rp.refuse_if_active(scenario.settings, group)  # inactive now
    new = rp.offsets_at(scenario.settings, group, [scenario.input], w["b_time"] - 60_000)
    assert {tp.partition: tp.offset for tp in new} == w["b_start"]
    member, _ = _join(scenario, group)
    try:
        with pytest.raises(rp.GroupActiveError, match="UNKNOWN_MEMBER_ID"):
            rp.reset_offsets(scenario.settings, group, new)
        assert _committed(scenario, group) == w["end"]
    finally:
        member.close()
    rp.reset_offsets(scenario.settings, group, new)
    assert _committed(scenario, group) == w["b_start"]


@pytest.mark.parametrize("state, members, active", [
    (ConsumerGroupState.STABLE, [], True),  # what tansu's ConsumerGroupDescribe says of a live group
    (ConsumerGroupState.STABLE, [object()], True),  # what real Kafka says
    (ConsumerGroupState.PREPARING_REBALANCING, [], True),
    (ConsumerGroupState.COMPLETING_REBALANCING, [object()], True),
    (ConsumerGroupState.UNKNOWN, [], True),  # tansu's "Unknown"/"Assigning" during a rebalance
    (ConsumerGroupState.EMPTY, [object()], True),
    (ConsumerGroupState.EMPTY, [], False),
    (ConsumerGroupState.DEAD, [], False),
])
def test_refusal_rule(state, members, active):
    assert rp.group_is_active(SimpleNamespace(state=state, members=members)) is active


def test_refusal_rule_for_an_unknown_group():
    assert rp.group_is_active(None) is False  # GROUP_ID_NOT_FOUND: nothing to protect


def test_live_worker_is_refused_while_running_and_replays_the_window_after_a_reset(
        broker, tiny_models, model_cache, tmp_path_factory):
    """The command as an operator runs it on the worker's own group (STREAMS_APP_ID)."""
    scenario = Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path_factory.mktemp("live"))
    settings = scenario.settings
    w = _produce_windows(scenario)
    worker = WorkerProcess(scenario, "live").start()
    try:
        first = collect(settings, scenario, until=lambda c: len(c.enriched) >= WINDOW_A + WINDOW_B, timeout=60)
        assert len(first.enriched) == WINDOW_A + WINDOW_B
        refused = _reset(scenario, settings.app_id, w["b_time"] - 60_000)
        assert refused.returncode == 2 and "is active" in refused.stdout, refused.stdout + refused.stderr
    finally:
        assert worker.stop() == 0, worker.log()[-2000:]
    assert _committed(scenario, settings.app_id) == w["end"]

    run = _reset(scenario, settings.app_id, w["b_time"] - 60_000)
    assert run.returncode == 0, run.stdout + run.stderr
    assert _committed(scenario, settings.app_id) == w["b_start"]
    worker = WorkerProcess(scenario, "after-reset").start()
    try:
        again = collect(settings, scenario, timeout=60,
                        until=lambda c: len(c.enriched) >= WINDOW_A + 2 * WINDOW_B)
    finally:
        assert worker.stop() == 0, worker.log()[-2000:]
    ids = [r["event_id"] for _, r in again.enriched]
    assert sorted(i for i in ids if i.startswith("a-")) == sorted(f"a-{i}" for i in range(WINDOW_A))
    assert sorted(i for i in ids if i.startswith("b-")) == sorted([f"b-{i}" for i in range(WINDOW_B)] * 2)
