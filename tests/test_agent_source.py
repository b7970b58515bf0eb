"""The Faust agent source without a broker: its Faust settings, its agents, and what aiokafka's
fetcher hands it for batches it cannot decode (real aiokafka record code, real raw batches)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from streams.source.faust import to_record
from streams.source.faust_patches import Undecodable, install_record_reader
from streams.app import create_app
from streams.kafka import OMITTED_HEADERS
from streams.settings import Settings
from tests.fixtures.raw_records import RawName, build_batch

TP = TopicPartition("in", 3)


def _fetched(batches: list[bytes], fetch_offset: int = 0) -> list:
    install_record_reader()
    records = MemoryRecords(b"".join(batches))
    return list(PartitionRecords(TP, records, [], fetch_offset, None, None, True, READ_UNCOMMITTED))


def _with_base(batch: bytes, base: int) -> bytes:
    return base.to_bytes(8, "big") + batch[8:]  # the base offset is outside the CRC


def test_the_agent_settings_let_a_long_batch_finish_without_leaving_the_group():
    settings = Settings(source="faust", max_poll_interval_s=123.0, kafka_session_timeout_s=7.0,
                        health_port=0)
    app = create_app(settings)
    conf = app.conf
    assert conf.broker_max_poll_interval == 123.0
    assert conf.broker_rebalance_timeout == 123.0
    assert conf.stream_processing_timeout == 123.0
    assert conf.broker_commit_livelock_soft_timeout == 123.0
    assert conf.broker_session_timeout == 7.0
    # One agent per input topic, one actor each (concurrency > 1 commits past in-flight events).
    agents = {name: agent for name, agent in app.agents.items()}
    assert set(agents) == {f"streams.enrich.{r.input}" for r in settings.topics}
    assert all(agent.concurrency == 1 for agent in agents.values())


def test_the_faust_app_starts_without_importing_torch():
    """The agent's consumer joins its group while torch is imported and the models load
    (`streams worker`), and `faust -A streams.app agents` answers in about a second: neither
    may wait for torch's import (several seconds)."""
    check = ("import sys, streams.app, streams.cli; "
             "print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
    from streams.engine import EncoderEngine  # still there when named: imported then

    assert EncoderEngine.__module__ == "streams.engine.encoder"


def test_the_librdkafka_source_has_no_agent():
    app = create_app(Settings(source="librdkafka", health_port=0))
    assert not list(app.agents)


def test_a_lying_batch_becomes_one_placeholder_per_offset_and_the_rest_is_read():
    good = build_batch([(b"a", b"v0", [])])
    lying = _with_base(build_batch([(b"l1", b"x", []), (b"l2", b"y", [])], claim_codec=1), 1)
    after = _with_base(build_batch([(b"b", b"v3", [])]), 3)
    out = _fetched([good, lying, after])
    assert [r.offset for r in out] == [0, 1, 2, 3]
    assert out[0].value == b"v0" and out[3].value == b"v3"
    for r in out[1:3]:
        rec = to_record(r)
        assert rec.client_error and "BadGzipFile" in rec.client_error
        assert (rec.key, rec.value, rec.headers) == (None, None, [])


def test_a_header_name_that_is_not_utf8_becomes_a_placeholder():
    bad = build_batch([(b"k", b"v", [(RawName(b"\xff\xfe"), b"x")])])
    out = _fetched([bad])
    assert len(out) == 1 and isinstance(out[0].headers, Undecodable)
    assert "UnicodeDecodeError" in to_record(out[0]).client_error


def test_headers_that_are_not_str_names_are_replaced_by_the_marker():
    class Msg:
        topic, partition, offset, timestamp, key, value = "in", 0, 5, 1.5, b"k", b"v"
        headers = ((b"\xff", b"x"),)

    rec = to_record(Msg())
    assert rec.headers[0][0] == OMITTED_HEADERS and rec.timestamp_ms == 1500


@pytest.mark.parametrize("fetch_offset", [0, 1])
def test_records_below_the_fetch_offset_are_skipped(fetch_offset):
    out = _fetched([build_batch([(b"a", b"0", []), (b"b", b"1", [])])], fetch_offset)
    assert [r.offset for r in out] == [0, 1][fetch_offset:]


def test_the_agent_consumer_gets_the_same_security_as_the_librdkafka_clients():
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.app import faust_credentials

    assert faust_credentials(Settings()) is None
    sasl = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
                    kafka_sasl_username="svc", kafka_sasl_password="s3cret")
    auth = credentials_to_aiokafka_auth(faust_credentials(sasl))
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("svc", "s3cret")
    tls = credentials_to_aiokafka_auth(faust_credentials(
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN",
                 kafka_sasl_username="svc", kafka_sasl_password="s3cret")))
    assert tls["security_protocol"] == "SASL_SSL" and tls["ssl_context"] is not None
    assert credentials_to_aiokafka_auth(faust_credentials(Settings(kafka_security_protocol="SSL")))[
        "security_protocol"] == "SSL"


# -- EagerWaitFirst: Faust's per-message hand-over, without four tasks per event ---------------

def _run(coro):
    import asyncio

    return asyncio.run(coro)


def test_eager_wait_first_finishes_a_callback_that_does_not_wait_inline():
    import asyncio
    import warnings

    from streams.source.faust_patches import EagerWaitFirst

    async def main():
        service = EagerWaitFirst()
        flow = asyncio.Event()
        tasks_before = len(asyncio.all_tasks())

        async def callback():
            return len(asyncio.all_tasks())  # no task of its own: runs in the caller's

        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the unstarted flow.wait() is closed, not leaked
            result = await service.wait_first(callback(), flow.wait())
        return tasks_before, result

    tasks_before, result = _run(main())
    assert result.done and not result.stopped and result.results == [tasks_before]


def test_eager_wait_first_hands_a_callback_that_waits_to_faust_and_returns_its_result():
    import asyncio

    from streams.source.faust_patches import EagerWaitFirst

    async def main():
        service = EagerWaitFirst()
        flow = asyncio.Event()
        room = asyncio.get_running_loop().create_future()

        async def callback():
            value = await room  # a full stream buffer
            return value * 2

        asyncio.get_running_loop().call_later(0.05, room.set_result, 21)
        return await service.wait_first(callback(), flow.wait())

    result = _run(main())
    assert result.results == [42] and not result.stopped


def test_eager_wait_first_cancels_a_waiting_callback_when_the_flow_is_suspended():
    import asyncio

    from streams.source.faust_patches import EagerWaitFirst

    seen = []

    async def main():
        service = EagerWaitFirst()
        flow = asyncio.Event()

        async def callback():
            try:
                await asyncio.get_running_loop().create_future()  # never has room
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        asyncio.get_running_loop().call_later(0.05, flow.set)  # a rebalance suspends the flow
        result = await service.wait_first(callback(), flow.wait())
        await asyncio.sleep(0)
        return result

    result = _run(main())
    assert result.results == [True] and seen == ["cancelled"]


def test_eager_wait_first_propagates_a_callback_error():
    import asyncio

    from streams.source.faust_patches import EagerWaitFirst

    async def main():
        async def callback():
            raise KeyError("no callback for this partition")

        await EagerWaitFirst().wait_first(callback(), asyncio.Event().wait())

    with pytest.raises(KeyError):
        _run(main())


def test_the_agent_app_consumes_through_the_eager_consumer():
    from streams.source.faust_patches import EagerConsumer

    app = create_app(Settings(source="faust"))
    assert app.transport.Consumer is EagerConsumer


# -- transactions, compaction and the commit (read_committed, issue: real Java traffic) ------
from aiokafka.consumer.fetcher import READ_COMMITTED  # noqa: E402

from streams.source.faust_patches import OFFSET_GAPS, OffsetGaps, install_gap_aware_commit  # noqa: E402
from tests.fixtures.raw_records import build_marker, build_txn_batch  # noqa: E402


def test_the_agent_consumer_reads_committed_data_only():
    from streams.source.faust_patches import PromptConsumerThread

    import asyncio

    async def create():
        app = create_app(Settings(source="faust", health_port=0))
        thread = PromptConsumerThread(app.consumer, loop=asyncio.get_running_loop(),
                                      beacon=app.consumer.beacon)
        return thread._create_worker_consumer(app.transport)

    consumer = asyncio.run(create())
    assert consumer._isolation_level == "read_committed"


def test_aborted_transactions_are_skipped_and_every_passed_offset_is_noted():
    install_record_reader()
    tp = TopicPartition("txn", 0)
    OFFSET_GAPS.forget([tp])
    committed = build_txn_batch([(b"k", b"c0"), (b"k", b"c1")], producer_id=7, base_offset=0)
    commit = build_marker(producer_id=7, commit=True, base_offset=2)
    aborted = build_txn_batch([(b"k", b"a0"), (b"k", b"a1")], producer_id=7, base_offset=3)
    abort = build_marker(producer_id=7, commit=False, base_offset=5)
    compacted = build_txn_batch([(b"k", b"d0"), (b"k", b"d2")], producer_id=8, base_offset=6, offsets=[0, 2])
    commit2 = build_marker(producer_id=8, commit=True, base_offset=9)
    records = MemoryRecords(b"".join([committed, commit, aborted, abort, compacted, commit2]))
    # The broker lists the aborted transaction (producer 7, first offset 3) in the fetch response.
    out = list(PartitionRecords(tp, records, [(7, 3)], 0, None, None, True, READ_COMMITTED))
    assert [(r.offset, r.value) for r in out] == [(0, b"c0"), (1, b"c1"), (6, b"d0"), (8, b"d2")]
    key = ("txn", 0)
    # marker 2, aborted 3-4, marker 5, compacted 7, marker 9: the commit can pass each of them
    assert OFFSET_GAPS.advance(key, 2) == 6
    assert OFFSET_GAPS.advance(key, 7) == 8
    assert OFFSET_GAPS.advance(key, 9) == 10
    assert OFFSET_GAPS.advance(key, 1) == 1  # a real record: never passed
    OFFSET_GAPS.forget([tp])


class _FaustConsumer:
    """Faust's Consumer state that `_new_offset` reads (faust/transport/consumer.py)."""

    def __init__(self, committed):
        from collections import defaultdict

        from intervaltree import IntervalTree

        self._committed_offset = defaultdict(lambda: None, committed)
        self._acked = defaultdict(list)
        self._acked_index = defaultdict(set)
        self._gap = defaultdict(IntervalTree)


def test_the_commit_walks_acked_offsets_and_noted_gaps_and_never_passes_an_unacked_record():
    from faust.transport import consumer as faust_consumer
    from faust.types import TP as FaustTP

    install_gap_aware_commit()
    new_offset = faust_consumer.Consumer._new_offset
    tp = FaustTP("gaps", 1)
    key = ("gaps", 1)
    OFFSET_GAPS.forget([tp])
    c = _FaustConsumer({tp: 10})
    c._acked[tp] = [10, 11, 12]
    c._acked_index[tp] = {10, 11, 12}
    assert new_offset(c, tp) == 13
    c._committed_offset[tp] = 13  # what Faust records once the commit succeeded
    OFFSET_GAPS.skipped(key, 13, 14)  # a commit marker after the partition's last record
    assert new_offset(c, tp) == 14  # nothing newly acked: still past the marker (lag 0)
    c._committed_offset[tp] = 14
    OFFSET_GAPS.skipped(key, 14, 40)  # an aborted transaction of 26 records
    c._acked[tp] = [41, 42]  # 40 not acked yet: the commit stops at it
    assert new_offset(c, tp) == 40
    c._committed_offset[tp] = 40
    assert new_offset(c, tp) is None and c._acked[tp] == [41, 42]
    c._acked[tp].append(40)
    assert new_offset(c, tp) == 43
    assert c._acked[tp] == [] and OFFSET_GAPS.held(key) == 0  # what was passed is forgotten
    # A fresh assignment without a committed start offset: nothing is committed on a guess.
    fresh = _FaustConsumer({})
    fresh._acked[tp] = [5, 6]
    assert new_offset(fresh, tp) is None


def test_the_acked_list_stays_as_long_as_the_batch_in_flight_across_many_transactions():
    from faust.transport import consumer as faust_consumer
    from faust.types import TP as FaustTP

    install_gap_aware_commit()
    tp = FaustTP("many", 0)
    OFFSET_GAPS.forget([tp])
    c = _FaustConsumer({tp: 0})
    offset = 0
    for _ in range(2000):  # 2,000 transactions of 3 records, each followed by its marker
        for o in range(offset, offset + 3):
            c._acked[tp].append(o)
        OFFSET_GAPS.skipped(("many", 0), offset + 3, offset + 4)
        offset += 4
        committed = faust_consumer.Consumer._new_offset(c, tp)
        assert committed == offset
        c._committed_offset[tp] = committed
        assert len(c._acked[tp]) == 0 and OFFSET_GAPS.held(tp) == 0


def test_offset_gaps_merge_and_forget():
    gaps = OffsetGaps()
    gaps.skipped(("t", 0), 5, 6)
    gaps.skipped(("t", 0), 6, 9)
    gaps.skipped(("t", 0), 3, 3)  # empty
    assert gaps.held() == 1 and gaps.advance(("t", 0), 5) == 9
    gaps.forget_below(("t", 0), 9)
    assert gaps.held() == 0
