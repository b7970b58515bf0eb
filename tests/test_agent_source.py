"""The Faust agent source without a broker: its Faust settings, its agents, and what aiokafka's
fetcher hands it for batches it cannot decode (real aiokafka record code, real raw batches)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from streams.agent import Undecodable, install_undecodable_guard, to_record
from streams.app import create_app
from streams.kafka import OMITTED_HEADERS
from streams.settings import Settings
from tests.fixtures.raw_records import RawName, build_batch

TP = TopicPartition("in", 3)


def _fetched(batches: list[bytes], fetch_offset: int = 0) -> list:
    install_undecodable_guard()
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
    from streams.engine import Engine  # still there when named: imported then

    assert Engine.__module__ == "streams.engine.encoder"


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
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN")))
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

    from streams.agent import EagerWaitFirst

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

    from streams.agent import EagerWaitFirst

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

    from streams.agent import EagerWaitFirst

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

    from streams.agent import EagerWaitFirst

    async def main():
        async def callback():
            raise KeyError("no callback for this partition")

        await EagerWaitFirst().wait_first(callback(), asyncio.Event().wait())

    with pytest.raises(KeyError):
        _run(main())


def test_the_agent_app_consumes_through_the_eager_consumer():
    from streams.agent import EagerConsumer

    app = create_app(Settings(source="faust"))
    assert app.transport.Consumer is EagerConsumer
