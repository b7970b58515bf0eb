"""Offsets that hold no record for the worker (records removed by compaction, written here as a
raw batch with holes in its offset deltas, as a compacted log serves it): every record around
them is enriched, and the group's committed offset still reaches the end of the partition.
Transaction markers are the other kind of gap: tests/contract/test_java_producer.py sends them
from a real Java producer, on both sources.

This one runs the Faust agent only: the embedded broker (tansu 0.6) answers a fetch of a
partition whose last batch has holes with that batch repeated to the response's size limit
(measured: 61,681 copies in one response), and librdkafka hands out the records it holds again
and again, which real Kafka never makes it do (docs/broker.md). aiokafka drops records below its
fetch position, so the agent sees each once. The librdkafka source's gap commit (its position) is
covered by the transaction markers of the Java test."""

from __future__ import annotations

import json
import struct
import time

import pytest
from confluent_kafka import TopicPartition

from streams.kafka import consumer, ensure_topics
from tests.fixtures.kafka_io import Scenario, WorkerProcess, collect
from aiokafka.record.util import calc_crc32c

from tests.fixtures.raw_records import BatchBuilder, produce_raw

pytestmark = pytest.mark.integration

LAST_OFFSET_DELTA_AT = struct.calcsize(">qiibIh")  # after base offset .. attributes (KIP-98 layout)


def compacted_batch(events: list[tuple[int, str]], last_delta: int) -> bytes:
    """A v2 batch holding only the records at these offset deltas (the rest compacted away);
    its last offset delta says where the batch ended before compaction."""
    builder = BatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                           producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for delta, event_id in events:
        value = json.dumps({"event_id": event_id, "text": "the parcel has not arrived, maria gonzalez"})
        builder.append(delta, timestamp=None, key=event_id.encode(), value=value.encode(), headers=[])
    buf = builder.build()
    # The builder writes the last appended delta; a compacted batch keeps its original one.
    struct.pack_into(">i", buf, LAST_OFFSET_DELTA_AT, last_delta)
    struct.pack_into(">I", buf, builder.CRC_OFFSET, calc_crc32c(buf[builder.ATTRIBUTES_OFFSET:]))
    return bytes(buf)


def test_compacted_offsets_are_passed_and_the_commit_reaches_the_end(broker, tiny_models, model_cache,
                                                                     tmp_path):
    scenario = Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path,
                        extra_env={"STREAMS_TOPIC_PARTITIONS": "1", "STREAMS_SOURCE": "faust"})
    settings = scenario.settings
    ensure_topics(settings)
    base = produce_raw(scenario.bootstrap, scenario.input, 0,
                       compacted_batch([(0, "c-0"), (3, "c-3"), (4, "c-4")], last_delta=7))
    # A second compacted batch after it: the offsets 1-2 and 5-7 above hold no record.
    produce_raw(scenario.bootstrap, scenario.input, 0, compacted_batch([(1, "d-1")], last_delta=2))
    worker = WorkerProcess(scenario).start()
    wanted = {"c-0", "c-3", "c-4", "d-1"}
    try:
        got = collect(settings, scenario, timeout=90, until=lambda c: c.enriched_ids >= wanted)
        reader = consumer(settings, settings.app_id)
        deadline, offset = time.monotonic() + 30, None
        try:
            while time.monotonic() < deadline:
                offset = reader.committed([TopicPartition(scenario.input, 0)], timeout=10)[0].offset
                if offset >= base + 11:
                    break
                time.sleep(0.5)
        finally:
            reader.close()
    finally:
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
    assert got.enriched_ids == wanted and not got.dead
    positions = sorted(r["source"]["offset"] - base for _, r in got.enriched)
    assert positions == [0, 3, 4, 9], positions  # the holes are where compaction left them
    # Batch one ends at base+7, batch two at base+10: the committed offset is the partition's end.
    assert offset == base + 11, f"committed {offset - base} of 11"
