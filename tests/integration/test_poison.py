"""The poison catalogue of issue 4 ("Dead letters") against ONE running worker.

Every poison record is written between two good events in the same partition. One worker
subprocess (module scope) reads them all; then every poison record must be in `<input>.dlq`
with the right `__streams.errors.reason`, its original key, value and headers, and the
topic/partition/offset/timestamp the broker gave it when it was written (taken from the
producer's delivery reports, not assumed). Its neighbours must be enriched, the worker must
still be alive and stop cleanly, and no poison text may reach the worker log. Tombstones are
skipped (neither enriched nor dead-lettered); Unicode and control characters are enriched
with entity offsets into the original Python string."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

import pytest

from streams.serde import DecodeError, SchemaCatalog, decode_input
from streams.settings import Settings
from tests.fixtures.kafka_io import Collected, Position, Scenario, WorkerProcess, collect, produce_recorded

pytestmark = pytest.mark.integration

MAX_BYTES = 2000  # STREAMS_MAX_TEXT_BYTES for this module's worker
ERR = "__streams.errors."
GOOD_BEFORE = "hello my name is maria gonzalez and i was charged twice"
GOOD_AFTER = "the parcel has not arrived, tracking says denver boston"


def secret(name: str) -> str:
    """Stands for personal data inside a poison record: it must never reach the worker log."""
    return f"poison-secret-{name}"


def js(obj) -> bytes:
    return json.dumps(obj).encode()


@dataclass(frozen=True)
class Ctx:
    catalog: SchemaCatalog
    topic: str

    def avro(self, record: dict) -> bytes:
        return self.catalog.encode_input(record, self.topic)


def _truncated_avro(name: str, ctx: Ctx, *, mid_text: bool) -> bytes:
    text = secret(name) + " and the rest of the sentence that the cut removes"
    value = ctx.avro({"event_id": f"{name}-poison", "text": text, "metadata": {"k": "v"}})
    start = value.index(secret(name).encode())
    # After the whole text (cut in the later fields), or inside the text string itself: the
    # length prefix then promises more bytes than there are (a lenient reader would enrich a
    # silently shortened text).
    cut = start + len(secret(name)) + (0 if mid_text else len(text) - len(secret(name)) + 2)
    assert cut < len(value)
    return value[:cut]


def _unknown_schema_id(name: str, ctx: Ctx) -> bytes:
    value = ctx.avro({"event_id": f"{name}-poison", "text": secret(name)})
    return value[:1] + (999_999).to_bytes(4, "big") + value[5:]


def _nested(depth: int) -> bytes:
    return b"[" * depth


@dataclass(frozen=True)
class Case:
    name: str
    reasons: tuple[str, ...] | None  # None: a tombstone (neither enriched nor dead-lettered)
    build: Callable[[str, Ctx], bytes | None]
    has_secret: bool = True  # the raw value carries secret(name) as UTF-8
    null_key: bool = False

    @property
    def key(self) -> bytes | None:
        return None if self.null_key else f"{self.name}-key".encode()


CASES = [
    # invalid JSON
    Case("json_unterminated", ("invalid_json",),
         lambda n, c: f'{{"event_id": "{n}-poison", "text": "{secret(n)}"'.encode()),
    Case("json_single_quotes", ("invalid_json",),
         lambda n, c: f"{{'event_id': '{n}-poison', 'text': '{secret(n)}'}}".encode()),
    Case("json_trailing_garbage", ("invalid_json",),
         lambda n, c: js({"event_id": f"{n}-poison", "text": secret(n)}) + b" }{"),
    # bytes that are not UTF-8
    Case("latin1", ("invalid_utf8",),
         lambda n, c: f'{{"event_id": "{n}-poison", "text": "{secret(n)} café"}}'.encode("latin-1")),
    Case("utf16_with_bom", ("invalid_utf8",),
         lambda n, c: f'{{"event_id": "{n}-poison", "text": "{secret(n)}"}}'.encode("utf-16"),
         has_secret=False),
    # Avro
    Case("avro_unknown_schema_id", ("unknown_schema_id",), _unknown_schema_id),
    Case("avro_truncated", ("invalid_avro",), lambda n, c: _truncated_avro(n, c, mid_text=False)),
    Case("avro_truncated_mid_text", ("invalid_avro",), lambda n, c: _truncated_avro(n, c, mid_text=True)),
    Case("avro_short_frame", ("invalid_avro",), lambda n, c: b"\x00\x00\x01", has_secret=False),
    # missing, empty, wrongly typed fields
    Case("missing_event_id", ("missing_field",), lambda n, c: js({"text": secret(n)})),
    Case("missing_text", ("missing_field",),
         lambda n, c: js({"event_id": f"{n}-poison", "customer_id": secret(n)})),
    Case("empty_text", ("invalid_field",),
         lambda n, c: js({"event_id": f"{n}-poison", "text": "", "customer_id": secret(n)})),
    Case("blank_text", ("invalid_field",),
         lambda n, c: js({"event_id": f"{n}-poison", "text": " \n\t ", "customer_id": secret(n)})),
    Case("event_id_is_a_number", ("invalid_field",), lambda n, c: js({"event_id": 12345, "text": secret(n)})),
    Case("text_is_a_list", ("invalid_field",), lambda n, c: js({"event_id": f"{n}-poison", "text": [secret(n)]})),
    Case("text_is_null", ("invalid_field",), lambda n, c: js({"event_id": f"{n}-poison", "text": None,
                                                              "customer_id": secret(n)})),
    Case("metadata_not_strings", ("invalid_field",),
         lambda n, c: js({"event_id": f"{n}-poison", "text": secret(n), "metadata": {"k": 1}})),
    Case("occurred_at_not_a_date", ("invalid_field",),
         lambda n, c: js({"event_id": f"{n}-poison", "text": "hi", "occurred_at": secret(n)})),
    Case("json_array", ("not_an_object",), lambda n, c: js([{"event_id": f"{n}-poison", "text": secret(n)}])),
    # over the size cap: never truncated
    Case("json_text_over_cap", ("too_large",),
         lambda n, c: js({"event_id": f"{n}-poison", "text": secret(n) + " " + "a" * 5000})),
    Case("avro_text_over_cap", ("too_large",),
         lambda n, c: c.avro({"event_id": f"{n}-poison", "text": secret(n) + " " + "a" * 5000})),
    Case("huge_json", ("too_large",),
         lambda n, c: js({"event_id": f"{n}-poison", "text": secret(n), "pad": ["x" * 100] * 8000})),
    # deeply nested JSON: under the cap it reaches the parser (RecursionError), over it does not
    Case("nested_under_cap", ("invalid_json",), lambda n, c: _nested(MAX_BYTES - 1), has_secret=False),
    Case("nested_100000", ("too_large",), lambda n, c: _nested(100_000), has_secret=False),
    # a value of 0 bytes (with a null key: the key must come back null too)
    Case("empty_value", ("empty_value",), lambda n, c: b"", has_secret=False, null_key=True),
    # Valid JSON whose strings hold a lone surrogate (an escape json accepts, no encoder can
    # write): it must be dead-lettered by whichever stage rejects it, never lost or fatal.
    Case("lone_surrogate_text", ("invalid_field", "inference_error"),
         lambda n, c: f'{{"event_id": "{n}-poison", "text": "{secret(n)} \\ud800 x"}}'.encode()),
    Case("lone_surrogate_event_id", ("invalid_field", "encode_error"),
         lambda n, c: f'{{"event_id": "{n}-\\udfff", "text": "{secret(n)} maria"}}'.encode()),
    # a tombstone: skipped, counted, neither enriched nor dead-lettered
    Case("tombstone", None, lambda n, c: None, has_secret=False),
]
POISON = [c for c in CASES if c.reasons is not None]
# Written after the worker has drained the cases above, each alone, so it is a batch by itself
# (a batch with no decodable event; a batch with only a tombstone).
ALONE = Case("poison_alone_in_its_batch", ("invalid_json",), lambda n, c: f'{{"text": "{secret(n)}'.encode())
ALONE_TOMBSTONE = Case("tombstone_alone_in_its_batch", None, lambda n, c: None, has_secret=False)

UNICODE_TEXTS = {
    "emoji": "my parcel 📦 to denver 👨‍👩‍👧‍👦 has not arrived 🇩🇪 👍🏽 thanks maria",
    "arabic": "مرحبا my name is maria gonzalez العربية boston",
    "hebrew": "שלום maria gonzalez עברית denver, the parcel has not arrived",
    "mixed_bidi": "refund \u202eplease\u202c maria مرحبا שלום 123 denver",
    "combining": "cafe\u0301 zalgo h\u0335e\u0336l\u0337l\u0338o maria gonzalez nai\u0308ve",
    "control": "tab\there\x00nul\x07bell\x1b[31mansi\u0085nel\u2028ls\u200bzw\ufeffbom\r\nmaria denver",
    "astral_only": "𝔪𝔞𝔯𝔦𝔞 𝕘𝕠𝕟𝕫𝕒𝕝𝕖𝕫 😀😃😄 𠜎𠜱",
}


def _unicode_events(ctx: Ctx) -> dict[str, tuple[str, bytes]]:
    """event_id -> (text, value): each text as raw UTF-8 JSON, as \\u-escaped JSON (emoji become
    surrogate-pair escapes) and as Avro."""
    out = {}
    for name, text in UNICODE_TEXTS.items():
        for fmt in ("json", "ascii", "avro"):
            eid = f"uni-{name}-{fmt}"
            record = {"event_id": eid, "text": text}
            value = (ctx.avro(record) if fmt == "avro" else
                     json.dumps(record, ensure_ascii=(fmt == "ascii")).encode())
            out[eid] = (text, value)
    # A value exactly at the cap is enriched whole (the cap is "larger than", no truncation).
    record = {"event_id": "at-cap", "text": ""}
    record["text"] = "maria gonzalez " * 200
    while len(js(record)) > MAX_BYTES:
        record["text"] = record["text"][:-1]
    record["text"] += "x" * (MAX_BYTES - len(js(record)))
    assert len(js(record)) == MAX_BYTES
    out["at-cap"] = (record["text"], js(record))
    return out


@dataclass
class Run:
    scenario: Scenario
    values: dict[str, bytes | None]  # case name -> the poison value written
    positions: dict[str, Position]  # label -> where the broker put it
    unicode: dict[str, str]  # event_id -> text
    got: Collected
    log: str
    alive_after_poison: bool
    exit_code: int | None
    timings: dict[str, float] = field(default_factory=dict)

    def dead_at(self, pos: Position) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
        return [d for d in self.got.dead
                if d[2].get(ERR + "partition") == str(pos.partition).encode()
                and d[2].get(ERR + "offset") == str(pos.offset).encode()]

    def enriched_at(self, pos: Position) -> list[dict]:
        return [r for _, r in self.got.enriched
                if (r["source"]["partition"], r["source"]["offset"]) == (pos.partition, pos.offset)]

    def enriched(self, event_id: str) -> list[dict]:
        return [r for _, r in self.got.enriched if r["event_id"] == event_id]


def _then_wait(worker: WorkerProcess, condition: Callable[[Collected], bool],
               grace_s: float = 0.0) -> Callable[[Collected], bool]:
    """`condition`, then keep reading a little longer, so a stray record would be seen too.
    Stops at once if the worker has exited: the tests then report what it left behind."""
    since: list[float] = []

    def until(got: Collected) -> bool:
        if worker.proc.poll() is not None:
            return True
        if not condition(got):
            return False
        since[:] = since or [time.monotonic()]
        return time.monotonic() - since[0] >= grace_s
    return until


@pytest.fixture(scope="module")
def run(broker, tiny_models, model_cache, tmp_path_factory) -> Run:
    scenario = Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path_factory.mktemp("poison"),
                        extra_env={"STREAMS_MAX_TEXT_BYTES": str(MAX_BYTES)})
    settings = scenario.settings
    assert settings.max_text_bytes == MAX_BYTES
    ctx = Ctx(SchemaCatalog.from_settings(settings), scenario.input)
    partitions = settings.topic_partitions
    started = time.monotonic()

    records = []
    values: dict[str, bytes | None] = {}
    for i, case in enumerate(CASES):
        p = i % partitions  # before, poison, after: consecutive offsets of one partition
        values[case.name] = value = case.build(case.name, ctx)
        if case.has_secret:
            assert secret(case.name).encode() in value, case.name  # the log check is not vacuous
        before = js({"event_id": f"{case.name}-before", "text": GOOD_BEFORE})
        after = ctx.avro({"event_id": f"{case.name}-after", "text": GOOD_AFTER})
        records += [
            (f"{case.name}-before", scenario.input, p, f"{case.name}-before".encode(), before, []),
            (case.name, scenario.input, p, case.key, value, [("trace", case.name.encode()),
                                                               ("tenant", b"\x00\xffbinary")]),
            (f"{case.name}-after", scenario.input, p, f"{case.name}-after".encode(), after, []),
        ]
    unicode = _unicode_events(ctx)
    for i, (eid, (_, value)) in enumerate(unicode.items()):
        records.append((eid, scenario.input, i % partitions, eid.encode(), value, []))
    positions = produce_recorded(settings, records)

    good_ids = {f"{c.name}-{w}" for c in CASES for w in ("before", "after")} | set(unicode)
    worker = WorkerProcess(scenario).start()
    try:
        got = collect(settings, scenario, timeout=180, until=_then_wait(
            worker, lambda g: good_ids <= g.enriched_ids and len(g.dead) >= len(POISON), grace_s=3.0))
        first_pass = time.monotonic() - started
        # Still consuming after every poison record: a poison record alone, then a tombstone
        # alone, then one good event per partition.
        alone = [(c.name, scenario.input, 0, c.key, c.build(c.name, ctx), [("trace", c.name.encode())])
                 for c in (ALONE, ALONE_TOMBSTONE)]
        values |= {label: value for label, _, _, _, value, _ in alone}
        positions |= produce_recorded(settings, alone[:1])
        collect(settings, scenario, timeout=60, until=_then_wait(worker, lambda g: len(g.dead) > len(POISON)))
        positions |= produce_recorded(settings, alone[1:])
        time.sleep(1.0)  # let it be a batch of its own (if not, the test is merely less sharp)
        sentinels = [(f"sentinel-{p}", scenario.input, p, f"sentinel-{p}".encode(),
                      js({"event_id": f"sentinel-{p}", "text": GOOD_AFTER}), []) for p in range(partitions)]
        positions |= produce_recorded(settings, sentinels)
        want = good_ids | {label for label, *_ in sentinels}
        got = collect(settings, scenario, timeout=120, until=_then_wait(
            worker, lambda g: want <= g.enriched_ids and len(g.dead) > len(POISON), grace_s=2.0))
        alive = worker.proc.poll() is None
    finally:
        exit_code = worker.stop()
    return Run(scenario, values, positions, {eid: text for eid, (text, _) in unicode.items()}, got,
               worker.log(), alive, exit_code,
               {"first_pass_s": first_pass, "total_s": time.monotonic() - started})


def test_worker_survives_every_poison_record_and_stops_cleanly(run):
    print(f"timings: {run.timings}; {len(run.got.enriched)} enriched, {len(run.got.dead)} dead")
    tail = run.log[-4000:]
    assert run.alive_after_poison, f"the worker died:\n{tail}"
    assert {f"sentinel-{p}" for p in range(run.scenario.settings.topic_partitions)} <= run.got.enriched_ids, tail
    assert run.exit_code == 0, tail
    assert "Traceback" not in run.log, tail
    assert "crashed" not in run.log.lower(), tail


@pytest.mark.parametrize("case", POISON, ids=lambda c: c.name)
def test_poison_record_is_dead_lettered_with_its_reason(run, case):
    pos = run.positions[case.name]
    dead = run.dead_at(pos)
    assert dead, f"{case.name} was not dead-lettered (written at {pos})"
    assert len(dead) == 1, f"{case.name} dead-lettered {len(dead)} times"
    key, value, headers = dead[0]
    assert headers[ERR + "reason"].decode() in case.reasons, headers[ERR + "exception.message"]
    # The original record: key, bytes and headers.
    assert key == case.key
    assert value == run.values[case.name]
    assert headers["trace"] == case.name.encode()
    assert headers["tenant"] == b"\x00\xffbinary"
    # Where it came from: exactly where the broker wrote it.
    assert headers[ERR + "topic"].decode() == pos.topic == run.scenario.input
    assert int(headers[ERR + "partition"]) == pos.partition
    assert int(headers[ERR + "offset"]) == pos.offset
    assert int(headers[ERR + "timestamp"]) == pos.timestamp_ms
    assert headers[ERR + "worker.id"]
    assert headers[ERR + "exception.class.name"]
    assert headers[ERR + "exception.message"]
    datetime.fromisoformat(headers[ERR + "failed.at"].decode())
    if case.has_secret:  # the error message describes the problem, never quotes the text
        assert secret(case.name).encode() not in headers[ERR + "exception.message"]
    # Not enriched as well, and its neighbours are.
    assert not run.enriched_at(pos), f"{case.name} was enriched"
    assert run.enriched(f"{case.name}-before") and run.enriched(f"{case.name}-after")


@pytest.mark.parametrize("case", [ALONE, ALONE_TOMBSTONE], ids=lambda c: c.name)
def test_a_batch_of_only_poison_or_only_a_tombstone(run, case):
    pos = run.positions[case.name]
    dead = run.dead_at(pos)
    assert not run.enriched_at(pos)
    if case.reasons is None:
        assert not dead, "a tombstone was dead-lettered"
        return
    assert len(dead) == 1, f"dead-lettered {len(dead)} times"
    key, value, headers = dead[0]
    assert (key, value) == (case.key, run.values[case.name])
    assert headers[ERR + "reason"].decode() in case.reasons
    assert (int(headers[ERR + "partition"]), int(headers[ERR + "offset"])) == (pos.partition, pos.offset)


def test_deep_nesting_reaches_the_parser_and_is_reported_as_nesting(run):
    dead = run.dead_at(run.positions["nested_under_cap"])
    assert dead and b"nested" in dead[0][2][ERR + "exception.message"]


def test_tombstone_is_skipped_and_counted(run):
    pos = run.positions["tombstone"]
    assert not run.dead_at(pos), "a tombstone was dead-lettered"
    assert not run.enriched_at(pos), "a tombstone was enriched"
    assert run.enriched("tombstone-before") and run.enriched("tombstone-after")
    counted = sum(int(n) for n in re.findall(r"(\d+) tombstones", run.log))
    assert counted >= 1, "the worker never counted the tombstone"


def test_only_poison_is_dead_lettered(run):
    poison_at = {(run.positions[c.name].partition, run.positions[c.name].offset) for c in POISON + [ALONE]}
    for _, _, headers in run.got.dead:
        where = (int(headers[ERR + "partition"]), int(headers[ERR + "offset"]))
        assert where in poison_at, f"a good record was dead-lettered: {headers[ERR + 'reason']!r} at {where}"
    duplicates = len(run.got.enriched) - len(run.got.enriched_ids)
    assert duplicates == 0, f"{duplicates} events enriched twice by one worker that never restarted"


@pytest.mark.parametrize("event_id", [f"uni-{n}-{f}" for n in UNICODE_TEXTS for f in ("json", "ascii", "avro")]
                         + ["at-cap"])
def test_unicode_and_control_characters_are_enriched_with_correct_offsets(run, event_id):
    records = run.enriched(event_id)
    assert len(records) == 1, f"{event_id} enriched {len(records)} times"
    record, text = records[0], run.unicode[event_id]
    assert record["source"]["offset"] == run.positions[event_id].offset
    assert record["classification"]["label"]
    for ent in record["entities"]:
        assert 0 <= ent["start"] < ent["end"] <= len(text), ent
        assert text[ent["start"]:ent["end"]] == ent["text"], ent


def test_unicode_offsets_check_is_not_vacuous(run):
    entities = [e for eid in run.unicode for r in run.enriched(eid) for e in r["entities"]]
    non_ascii = [e for e in entities if not e["text"].isascii()]
    assert entities and non_ascii, "no entity touched a non-ASCII character: offsets untested"


def test_no_poison_text_in_the_worker_log(run):
    assert "INFO" in run.log  # the worker logged at info level
    leaked = [c.name for c in POISON + [ALONE] if c.has_secret and secret(c.name) in run.log]
    assert not leaked, f"raw poison text in the worker log: {leaked}"
    assert "maria gonzalez" not in run.log.lower()


def test_100000_levels_of_nesting_under_the_default_cap_is_a_decode_error():
    """The worker above caps values at 2,000 bytes, so its 100,000-level record never reaches
    the parser. Under the default cap (100,000 bytes) it does: a DecodeError, not a crash."""
    default_cap = Settings.model_fields["max_text_bytes"].default
    value = _nested(100_000)
    assert len(value) <= default_cap
    result = decode_input(value, "t.in", None, default_cap)
    assert isinstance(result, DecodeError) and result.reason == "invalid_json"

