"""Per-key order: within an input partition, outputs and dead letters are produced in input
offset order, whatever order the engine's length-sorted groups finish in; and a registry that
fails while encoding holds the batch (RETRY) or stops the worker (EXIT), never dead-letters it."""

from __future__ import annotations

import json
import uuid

import pytest

from streams.engine import NoopEngine
from streams.errors import FatalError, RetriableError
from streams.pipeline import InOrder, enrich_records
from streams.records import InRecord
from streams.runtime import Runtime
from streams.serde import SchemaCatalog
from streams.settings import Settings
from streams.telemetry import Telemetry

TOPIC = "support.tickets"


class Sent:
    max_message_bytes = 1_000_000

    def __init__(self):
        self.groups: list[list] = []

    def fits(self, record) -> bool:
        return True

    def send(self, records):
        self.groups.append(list(records))


@pytest.fixture
def runtime():
    settings = Settings(output_chunk=2, model_batch=2)
    catalog = SchemaCatalog(f"mock://order-{uuid.uuid4().hex}", settings.schema_dir,
                            [r.input for r in settings.topics], [r.output for r in settings.topics])
    return Runtime(settings, NoopEngine(), catalog, Sent(), telemetry=Telemetry.disabled())


def _rec(partition: int, offset: int, text: str | None, raw: bytes | None = None) -> InRecord:
    value = raw if raw is not None else json.dumps({"event_id": f"p{partition}-{offset}", "text": text}).encode()
    return InRecord(TOPIC, partition, offset, 1_700_000_000_000, f"key-{partition}".encode(), value)


def test_outputs_leave_in_offset_order_per_partition_though_shorter_texts_finish_first(runtime):
    # Long texts early in each partition: the engine's length-sorted groups finish them last.
    records = []
    for partition in (0, 1, 2):
        for offset, length in enumerate([5, 400, 300, 10, 200, 100]):
            records.append(_rec(partition, offset, "x" * length))
    records.insert(3, _rec(1, 6, None, raw=b"{not json"))  # a dead letter among them
    records.insert(5, InRecord(TOPIC, 2, 6, None, b"t", None))  # a tombstone
    records.sort(key=lambda r: (r.partition, r.offset))
    route = runtime.settings.route(TOPIC)
    result = enrich_records(runtime, route, records, emit=runtime.producer.send)

    assert (result.enriched, result.dead, result.tombstones) == (18, 1, 1)
    sent = [r for group in runtime.producer.groups for r in group]
    assert sent == result.out
    assert len(runtime.producer.groups) > 2, "one group only: the test proves nothing about order"
    for partition in (0, 1, 2):
        offsets = [r.source.offset for r in sent if r.source.partition == partition]
        assert offsets == sorted(offsets), (partition, offsets)
    assert [r.kind for r in sent if r.source.partition == 1][-1] == "dlq"
    # The first outputs leave after one group (of 2): the earliest records of the partitions,
    # chosen by their place, not their length, so nothing earlier holds them back.
    first = runtime.producer.groups[0]
    assert [(r.source.partition, r.source.offset) for r in first] == [(0, 0), (1, 0)]


def test_by_default_the_rest_of_a_batch_goes_to_the_engine_whole_after_a_first_group(runtime):
    """A quarter of model_batch (the earliest events of each partition) is inferred and sent
    first; then the rest in one engine call, which sorts all of it by token length (groups of
    output_chunk cut it into length-sorted groups that each pad more)."""
    calls: list[int] = []

    class Counting(NoopEngine):
        def infer(self, texts, labels, topic=None):
            calls.append(len(texts))
            return super().infer(texts, labels, topic)

    runtime.engine = Counting()
    runtime.settings = runtime.settings.model_copy(update={"output_chunk": 0, "model_batch": 16})
    records = [_rec(p, o, "y" * (10 + 7 * o)) for p in (0, 1) for o in range(9)]
    result = enrich_records(runtime, runtime.settings.route(TOPIC), records, emit=runtime.producer.send)
    assert result.enriched == 18 and calls == [4, 14]
    first = runtime.producer.groups[0]
    assert [(r.source.partition, r.source.offset) for r in first] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_in_order_releases_each_partition_up_to_its_first_pending_record():
    records = [_rec(0, 0, "a"), _rec(1, 0, "b"), _rec(0, 1, "c"), _rec(1, 1, "d")]
    order = InOrder(records)
    order.settle(2, "p0-1")
    order.settle(3, "p1-1")
    assert order.release() == []  # both partitions wait for their first record
    order.settle(1, "p1-0")
    assert order.release() == ["p1-0", "p1-1"]
    order.settle(0, None)  # a tombstone: nothing to send, but it no longer holds partition 0
    assert order.release() == ["p0-1"]
    assert order.release() == []


class FailingRegistry:
    def __init__(self, exc):
        self.exc = exc

    def lookup_schema(self, *args, **kwargs):
        raise self.exc


class HttpError(Exception):
    def __init__(self, status):
        super().__init__(f"HTTP {status}")
        self.http_status_code = status


@pytest.mark.parametrize("exc, raised", [(TimeoutError("read timed out"), RetriableError),
                                         (HttpError(503), RetriableError),
                                         (HttpError(401), FatalError),
                                         (HttpError(404), FatalError)])
def test_a_registry_failure_while_encoding_is_never_a_dead_letter(runtime, exc, raised):
    runtime.catalog.ensure_registered()
    runtime.catalog.client = FailingRegistry(exc)
    route = runtime.settings.route(TOPIC)
    with pytest.raises(raised) as info:
        enrich_records(runtime, route, [_rec(0, 0, "my parcel is late")], emit=runtime.producer.send)
    if raised is RetriableError:
        assert info.value.dependency == "registry"
    assert not [r for group in runtime.producer.groups for r in group if r.kind != "output"]
