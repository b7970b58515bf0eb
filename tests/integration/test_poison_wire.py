"""Poison that reaches past the value parser, against ONE running worker with default limits:
records that crashed or stalled the worker before (issue 12, cases 1-5), and what else a
hostile or buggy producer can send.

- a JSON integer of more than 4,300 digits (Python's int limit) in an ignored field
- a 1.1 MB value (its dead letter would be too large to produce with the original bytes)
- a small event with 1.05 MB of headers (its enriched record would be too large)
- a 1.1 MB key (output and dead letter too large; the key itself must go too)
- a header name that is not UTF-8 (written raw: well-behaved clients refuse to)
- a batch whose attributes claim gzip but whose payload is not compressed (written raw, two
  records): the client cannot decode it at all
- a header with a null value; a metadata key that is personal data; NaN as the text

Each poison record sits between good events in one partition. At the end: the worker is still
alive, every good event is enriched, every poison record has exactly one outcome, and the
group's committed offset of every partition is the end of what was written."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pytest
from confluent_kafka import TopicPartition

from streams.kafka import OMITTED_HEADERS, consumer
from tests.fixtures.kafka_io import Collected, Position, Scenario, WorkerProcess, collect, produce_recorded
from tests.fixtures.raw_records import RawName, build_batch, produce_raw

pytestmark = pytest.mark.integration

ERR = "__streams.errors."
OMITTED = ERR + "omitted"
MB = 1_000_000
BIG = {"message_max_bytes": 8 * MB}  # the test producer may write what the worker must refuse


def secret(name: str) -> str:
    return f"poison-secret-{name}"


def js(obj) -> bytes:
    return json.dumps(obj).encode()


def good(label: str) -> bytes:
    return js({"event_id": label, "text": "hello my name is maria gonzalez, the parcel has not arrived"})


@dataclass(frozen=True)
class Case:
    name: str
    outcome: str  # a DLQ reason, or "enriched"
    key: bytes | None
    value: bytes | None
    headers: list
    omitted: str | None = None  # what a bare dead letter says it left out
    raw: bool = False  # written as a raw batch (the value/headers a client would refuse)


def cases() -> list[Case]:
    return [
        Case("huge_integer", "invalid_json", b"k1",
             f'{{"event_id": "x", "text": "{secret("huge_integer")}", "n": {"9" * 4400}}}'.encode(), []),
        Case("value_1mb", "too_large", b"k2",
             js({"event_id": "x", "text": secret("value_1mb") + " " + "a" * (11 * MB // 10)}), [],
             omitted="value,headers"),
        Case("headers_1mb", "output_too_large", b"k3", good("headers_1mb"),
             [("blob", b"b" * (105 * MB // 100)), ("tenant", b"t")], omitted="value,headers"),
        Case("key_1mb", "output_too_large", b"K" * (11 * MB // 10), good("key_1mb"), [],
             omitted="key,value,headers"),
        Case("bad_header_name", "enriched", b"k5", good("bad_header_name"),
             [(RawName(b"\xff\xfe" + secret("bad_header_name").encode()), b"v"), ("ok", b"1")], raw=True),
        Case("null_header_value", "enriched", b"k6", good("null_header_value"), [("nullable", None)]),
        Case("metadata_key_personal", "invalid_field", b"k7",
             js({"event_id": "x", "text": "hi", "metadata": {secret("metadata_key_personal"): 1}}), []),
        Case("text_nan", "invalid_field", b"k8", b'{"event_id": "x", "text": NaN}', []),
    ]


@dataclass
class Run:
    scenario: Scenario
    cases: list[Case]
    positions: dict[str, Position]
    lying: list[int]  # offsets of the records of the lying batch
    lying_partition: int
    ends: dict[int, int]  # partition -> offset after the last record written
    got: Collected
    committed: dict[int, int]
    alive: bool
    exit_code: int | None
    log: str

    def dead_at(self, partition: int, offset: int):
        return [d for d in self.got.dead if d[2].get(ERR + "partition") == str(partition).encode()
                and d[2].get(ERR + "offset") == str(offset).encode()]

    def enriched_at(self, partition: int, offset: int):
        return [(k, r) for k, r in self.got.enriched
                if (r["source"]["partition"], r["source"]["offset"]) == (partition, offset)]


@pytest.fixture(scope="module")
def run(broker, tiny_models, model_cache, tmp_path_factory) -> Run:
    scenario = Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path_factory.mktemp("wire"))
    settings = scenario.settings
    partitions = settings.topic_partitions
    positions: dict[str, Position] = {}
    want: set[str] = set()
    all_cases = cases()
    for i, case in enumerate(all_cases):
        p = i % partitions
        before, after = f"{case.name}-before", f"{case.name}-after"
        want |= {before, after}
        positions |= produce_recorded(settings, [(before, scenario.input, p, before.encode(), good(before), [])])
        if case.raw:
            base = produce_raw(broker.bootstrap, scenario.input, p, build_batch([(case.key, case.value, case.headers)]))
            positions[case.name] = Position(scenario.input, p, base, -1)
        else:
            positions |= produce_recorded(settings, [(case.name, scenario.input, p, case.key, case.value,
                                                      case.headers)], **BIG)
        positions |= produce_recorded(settings, [(after, scenario.input, p, after.encode(), good(after), [])])
    # The lying batch: two records the client cannot decompress, between good events.
    lp = 1
    positions |= produce_recorded(settings, [("lying-before", scenario.input, lp, b"lb", good("lying-before"), [])])
    base = produce_raw(broker.bootstrap, scenario.input, lp, build_batch(
        [(b"l1", good("lying-1"), []), (b"l2", good("lying-2"), [])], claim_codec=1))
    positions |= produce_recorded(settings, [("lying-after", scenario.input, lp, b"la", good("lying-after"), [])])
    want |= {"lying-before", "lying-after"}
    ends = {p: max(pos.offset for pos in positions.values() if pos.partition == p) + 1 for p in range(partitions)}
    ends[lp] = max(ends[lp], base + 2)

    worker = WorkerProcess(scenario).start()
    dead_wanted = sum(c.outcome != "enriched" for c in all_cases) + 2

    def done(got: Collected) -> bool:
        return worker.proc.poll() is not None or (want <= got.enriched_ids and len(got.dead) >= dead_wanted)

    try:
        got = collect(settings, scenario, timeout=180, until=done)
        # Sentinels: still consuming every partition after all of that.
        sentinels = [(f"sentinel-{p}", scenario.input, p, f"s{p}".encode(), good(f"sentinel-{p}"), [])
                     for p in range(partitions)]
        positions |= produce_recorded(settings, sentinels)
        for label, _, p, *_ in sentinels:
            ends[p] = positions[label].offset + 1
        want |= {label for label, *_ in sentinels}
        got = collect(settings, scenario, timeout=120, until=done)
        time.sleep(2.0)  # the commit follows the acknowledgement
        alive = worker.proc.poll() is None
        reader = consumer(settings, settings.app_id)
        committed = {tp.partition: tp.offset for tp in reader.committed(
            [TopicPartition(scenario.input, p) for p in range(partitions)], timeout=10)}
        reader.close()
    finally:
        exit_code = worker.stop()
    return Run(scenario, all_cases, positions, [base, base + 1], lp, ends, got, committed, alive,
               exit_code, worker.log())


def test_the_worker_survives_and_every_good_event_is_enriched(run):
    tail = run.log[-4000:]
    assert run.alive, f"the worker died:\n{tail}"
    good_ids = {f"{c.name}-{w}" for c in run.cases for w in ("before", "after")} | {"lying-before", "lying-after"}
    assert good_ids <= run.got.enriched_ids, (good_ids - run.got.enriched_ids, tail)
    assert run.exit_code == 0, tail
    assert "Traceback" not in run.log, tail


def test_the_committed_offset_reaches_the_end_of_every_partition(run):
    assert run.committed == run.ends, (run.committed, run.ends)


@pytest.mark.parametrize("name", [c.name for c in cases()])
def test_each_poison_record_has_exactly_one_outcome(run, name):
    case = next(c for c in run.cases if c.name == name)
    pos = run.positions[name]
    dead, enriched = run.dead_at(pos.partition, pos.offset), run.enriched_at(pos.partition, pos.offset)
    if case.outcome == "enriched":
        assert len(enriched) == 1 and not dead, (len(enriched), dead and dead[0][2].get(ERR + "reason"))
        return
    assert not enriched, f"{name} was enriched"
    assert len(dead) == 1, f"{name}: {len(dead)} dead letters"
    key, value, headers = dead[0]
    assert headers[ERR + "reason"].decode() == case.outcome, headers.get(ERR + "exception.message")
    assert int(headers[ERR + "partition"]) == pos.partition and headers[ERR + "topic"].decode() == pos.topic
    if case.omitted is None:  # the original record, whole
        assert (key, value) == (case.key, case.value)
        assert OMITTED not in headers
    else:  # too large to carry: provenance only, saying what was left out
        assert headers[OMITTED].decode() == case.omitted
        assert value == b""
        assert key == (None if "key" in case.omitted else case.key)
        assert "blob" not in headers
    assert secret(name).encode() not in headers[ERR + "exception.message"]


def test_a_header_name_that_is_not_utf8_is_replaced_by_a_marker(run):
    pos = run.positions["bad_header_name"]
    (_, record), = run.enriched_at(pos.partition, pos.offset)
    assert record["event_id"] == "bad_header_name"
    # The enriched record's headers: read back raw with the reader of the collected outputs.
    outputs = [h for h in _output_headers(run) if h.get("__pos") == (pos.partition, pos.offset)]
    assert outputs and OMITTED_HEADERS in outputs[0], outputs


def _output_headers(run) -> list[dict]:
    settings = run.scenario.settings
    cons = consumer(settings, f"hdr-{run.scenario.name}")
    cons.subscribe([run.scenario.output])
    from streams.serde import SchemaCatalog
    catalog = SchemaCatalog.from_settings(settings)
    out, deadline = [], time.monotonic() + 30
    while time.monotonic() < deadline and len(out) < len(run.got.enriched):
        for m in cons.consume(500, 0.5):
            if m.error():
                continue
            rec = catalog.decode(m.value(), m.topic())
            out.append(dict(m.headers() or []) | {"__pos": (rec["source"]["partition"], rec["source"]["offset"])})
    cons.close()
    return out


def test_a_null_header_value_stays_null(run):
    pos = run.positions["null_header_value"]
    outputs = [h for h in _output_headers(run) if h.get("__pos") == (pos.partition, pos.offset)]
    assert outputs and "nullable" in outputs[0] and outputs[0]["nullable"] is None, outputs


def test_a_batch_the_client_cannot_decode_is_dead_lettered_record_by_record(run):
    for offset in run.lying:
        dead = run.dead_at(run.lying_partition, offset)
        assert len(dead) == 1, (offset, len(dead))
        key, value, headers = dead[0]
        assert headers[ERR + "reason"] == b"undecodable_record"
        assert b"_BAD_COMPRESSION" in headers[ERR + "exception.message"]
        assert (key, value) == (None, b"")
        assert headers[OMITTED] == b"key,value,headers"
    assert not any(run.enriched_at(run.lying_partition, o) for o in run.lying)
    assert "re-fetch" in run.log  # re-fetched a bounded number of times first, and said so


def test_no_poison_text_in_the_worker_log(run):
    leaked = [c.name for c in run.cases if secret(c.name) in run.log]
    assert not leaked, leaked


def test_read_headers_catches_a_bad_header_name_on_a_warm_call_site(broker):
    """confluent-kafka 2.16 leaves the decode error pending instead of raising it; once Python
    has specialized the call site, `m.headers()` returns and the error surfaces at a later,
    unrelated call (this crashed the worker on the 2nd or 3rd batch, not on the 1st)."""
    topic = f"hdr-{time.monotonic_ns()}"
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        f.result()
    for i in range(30):
        headers = [(RawName(b"\xff\xfe"), b"v")] if i % 3 == 2 else [("ok", b"1")]
        produce_raw(broker.bootstrap, topic, 0, build_batch([(b"k", b"v%d" % i, headers)]))
    from confluent_kafka import Consumer
    from streams.kafka import read_headers
    cons = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": topic, "auto.offset.reset": "earliest",
                     "session.timeout.ms": 6000})
    cons.subscribe([topic])
    msgs, deadline = [], time.monotonic() + 60
    while len(msgs) < 30 and time.monotonic() < deadline:
        msgs += [m for m in cons.consume(30, 1.0) if not m.error()]
    assert len(msgs) == 30
    out = []
    for m in msgs:  # one call per message, as the consumer does, on a call site that warms up
        out.append(read_headers(m))
        tuple([1])  # a checked call: a pending error would be raised here
    cons.close()
    assert [h[0][0] == OMITTED_HEADERS for h in out] == [i % 3 == 2 for i in range(30)]
