"""EnrichedEvent evolves under BACKWARD_TRANSITIVE: the current schema reads data written with
every released version in schemas/history/.

The decision is Apache Avro's reader/writer compatibility check (tests/contract/avro_compat.py),
cross-checked with the Java Avro that Java consumers run (examples/java-consumer), and proven
with data: a record written with each old schema (fastavro) is read with the current one.
BACKWARD_TRANSITIVE does not require old readers to read new data; the FORWARD levels would, and
`avro_compat.check` covers them too.

To release a schema change: edit schemas/EnrichedEvent.avsc, copy it to
schemas/history/EnrichedEvent.v<N+1>.avsc, and let these tests judge it.

Field records (schemas/fields/<Name>.avsc, typed fields an LLM fills) evolve under the same rule,
with their releases in schemas/history/fields/<Name>.v<N>.avsc, and so does the output schema
of a topic that declares one (EnrichedEvent + `fields`, streams/serde/registry.py): it must read
every release of the plain EnrichedEvent (the subject held that before the topic got fields)
and every composition of an EnrichedEvent release with a field-record release."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from fastavro.read import SchemaResolutionError
from fastavro.schema import to_parsing_canonical_form

from streams.serde.registry import compose_enriched
from tests.contract import avro_compat
from tests.contract.java import run_java

LEVEL = "BACKWARD_TRANSITIVE"
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
CURRENT = SCHEMAS / "EnrichedEvent.avsc"
HISTORY_DIR = SCHEMAS / "history"
FIELDS_DIR = SCHEMAS / "fields"
FIELDS_HISTORY_DIR = HISTORY_DIR / "fields"
FIELD_RECORDS = sorted(p.stem for p in FIELDS_DIR.glob("*.avsc"))


def history_files(name: str = "EnrichedEvent", directory: Path = HISTORY_DIR) -> list[Path]:
    files = []
    for path in directory.glob(f"{name}.v*.avsc"):
        match = re.fullmatch(rf"{re.escape(name)}\.v(\d+)\.avsc", path.name)
        assert match, f"{path.name}: history files are named {name}.v<N>.avsc"
        files.append((int(match[1]), path))
    return [p for _, p in sorted(files)]


def history(name: str = "EnrichedEvent", directory: Path = HISTORY_DIR) -> list[tuple[str, dict]]:
    return [(p.stem.split(".")[-1], avro_compat.load(p)) for p in history_files(name, directory)]


@pytest.fixture(scope="module")
def current() -> dict:
    return avro_compat.load(CURRENT)


def with_field_type(schema: dict, path: str, new_type) -> dict:
    """A copy of `schema` with the field at `path` (e.g. `entities[].start`) retyped."""
    schema = copy.deepcopy(schema)
    node = schema
    *parents, leaf = path.split(".")
    for name in parents:
        field = next(f for f in node["fields"] if f["name"] == name.removesuffix("[]"))
        node = field["type"]["items"] if name.endswith("[]") else field["type"]
    field = next(f for f in node["fields"] if f["name"] == leaf)
    field["type"] = new_type
    field.pop("default", None)
    return schema


def with_new_field(schema: dict, field: dict) -> dict:
    schema = copy.deepcopy(schema)
    schema["fields"].append(field)
    return schema


def assert_survives(expected, got, path="") -> list[str]:
    """Every value the writer wrote comes back; returns the reader-only fields (from defaults)."""
    filled = []
    if isinstance(expected, dict):
        assert isinstance(got, dict), path
        for key, value in expected.items():
            if key in got:  # a field the reader dropped is skipped, which is allowed
                filled += assert_survives(value, got[key], f"{path}.{key}".lstrip("."))
        filled += [f"{path}.{k}".lstrip(".") for k in got if k not in expected]
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), path
        for i, (e, g) in enumerate(zip(expected, got)):
            filled += assert_survives(e, g, f"{path}[{i}]")
    else:
        assert got == expected, f"{path}: wrote {expected!r}, read {got!r}"
    return filled


# -- the rule, on the real schemas -----------------------------------------------------------

def test_history_holds_every_release_and_the_current_schema_is_the_latest():
    files = history_files()
    assert files, f"no released versions in {HISTORY_DIR}"
    numbers = [int(p.stem.split(".v")[-1]) for p in files]
    assert numbers == list(range(1, len(files) + 1)), f"history versions must run 1..N, found {numbers}"
    latest = files[-1]
    assert to_parsing_canonical_form(avro_compat.load(CURRENT)) == \
        to_parsing_canonical_form(avro_compat.load(latest)), (
        f"{CURRENT.name} differs from the latest released version {latest.name}: a changed schema "
        f"is a new release; copy it to schemas/history/EnrichedEvent.v{len(files) + 1}.avsc so "
        "every later change is checked against it too")


def test_current_schema_is_backward_transitive_compatible(current):
    problems = avro_compat.check(LEVEL, current, history())
    assert not problems, f"{CURRENT.name} breaks {LEVEL}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("nulls", [False, True], ids=["values", "nulls"])
@pytest.mark.parametrize("old", history_files(), ids=lambda p: p.stem)
def test_data_written_with_each_release_reads_with_the_current_schema(old, nulls, current):
    writer = avro_compat.load(old)
    data = avro_compat.write(writer, avro_compat.sample_datum(writer, nulls=nulls))
    as_written = avro_compat.read(data, writer, writer)
    as_read = avro_compat.read(data, writer, current)  # fastavro's schema resolution
    filled = assert_survives(as_written, as_read)  # fields new since `old` come from defaults
    if old == history_files()[-1]:
        assert not filled, "the latest release is the current schema"


def test_java_avro_agrees(current):
    """Java's org.apache.avro.SchemaCompatibility, as a Java consumer would judge it."""
    result = run_java("SchemaCompatibilityCheck", CURRENT, *history_files(), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"COMPATIBLE {p}" for p in history_files()]


def test_field_confidence_is_optional_and_null_in_data_written_before_it(current):
    """v2 added `field_confidence` (map<double>, the LLM's per-field confidence): records
    written with v1 read with it null; a v2 record keeps its values exactly."""
    field = next(f for f in current["fields"] if f["name"] == "field_confidence")
    assert field["type"] == ["null", {"type": "map", "values": "double"}] and field["default"] is None
    v1 = dict(history())["v1"]
    data = avro_compat.write(v1, avro_compat.sample_datum(v1))
    assert avro_compat.read(data, v1, current)["field_confidence"] is None
    datum = avro_compat.sample_datum(current) | {"field_confidence": {"urgency": 0.93, "order_id": 1e-9}}
    assert avro_compat.read(avro_compat.write(current, datum), current, current)["field_confidence"] == \
        {"urgency": 0.93, "order_id": 1e-9}


def test_redacted_text_is_optional_and_null_in_data_written_before_it(current):
    """v3 added `redacted_text` (issue 28): records written with v1 and v2 read with it null; a
    v3 record keeps non-ASCII text exactly."""
    field = next(f for f in current["fields"] if f["name"] == "redacted_text")
    assert field["type"] == ["null", "string"] and field["default"] is None
    releases = dict(history())
    for old in ("v1", "v2"):
        data = avro_compat.write(releases[old], avro_compat.sample_datum(releases[old]))
        assert avro_compat.read(data, releases[old], current)["redacted_text"] is None
    datum = avro_compat.sample_datum(current) | {"redacted_text": "Hi <GIVEN_NAME>, café 👍🏽"}
    assert avro_compat.read(avro_compat.write(current, datum), current, current)["redacted_text"] == \
        "Hi <GIVEN_NAME>, café 👍🏽"


STAMP_FIELDS = ["labels_digest", "prompt_digest", "examples_digest", "fields_digest", "candidate"]


def test_stamp_is_optional_and_null_in_data_written_before_it(current):
    """v4 added `stamp` (what made a record besides its models: a record of optional digests),
    placed before `field_confidence` so `fields` stays right after it: records written with
    v1-v3 read with it null; a v4 record keeps every digest, and a null one, exactly. Readers
    of v3 skip it (FORWARD too: old consumers keep working before they are regenerated)."""
    names = [f["name"] for f in current["fields"]]
    assert names.index("stamp") == names.index("redacted_text") + 1 == names.index("field_confidence") - 1
    field = current["fields"][names.index("stamp")]
    assert field["type"][0] == "null" and field["default"] is None
    record = field["type"][1]
    assert (record["type"], record["name"]) == ("record", "Stamp")
    assert [f["name"] for f in record["fields"]] == STAMP_FIELDS
    assert all(f["type"] == ["null", "string"] and f["default"] is None for f in record["fields"])
    releases = dict(history())
    for old in ("v1", "v2", "v3"):
        for nulls in (False, True):
            data = avro_compat.write(releases[old], avro_compat.sample_datum(releases[old], nulls=nulls))
            assert avro_compat.read(data, releases[old], current)["stamp"] is None, old
    stamp = {"labels_digest": "sha256:0123456789abcdef", "prompt_digest": None,
             "examples_digest": "sha256:fedcba9876543210", "fields_digest": "sha256:00000000000000ff",
             "candidate": None}
    datum = avro_compat.sample_datum(current) | {"stamp": stamp}
    data = avro_compat.write(current, datum)
    assert avro_compat.read(data, current, current)["stamp"] == stamp
    v3 = releases["v3"]
    as_v3 = avro_compat.read(data, current, v3)  # an old consumer reads a v4 record, stamp skipped
    assert "stamp" not in as_v3 and as_v3["event_id"] == datum["event_id"]
    assert avro_compat.check("FORWARD_TRANSITIVE", current, history()) == []


def test_schemas_document_every_field_and_default_every_optional_one():
    for path in [*SCHEMAS.glob("*.avsc"), *FIELDS_DIR.glob("*.avsc")]:
        schema = avro_compat.load(path)
        namespace = "io.streams.enrichment" + (".fields" if path.parent == FIELDS_DIR else "")
        assert schema["namespace"] == namespace, path.name
        named = avro_compat._named_types(schema)
        for record in {id(s): s for s in named.values()}.values():
            assert record.get("doc"), f"{path.name}: {record['name']} has no doc"
            for field in record.get("fields", []):
                where = f"{path.name}: {record['name']}.{field['name']}"
                assert field.get("doc"), f"{where} has no doc"
                if isinstance(field["type"], list) and "null" in field["type"]:
                    assert field["type"][0] == "null" and "default" in field and field["default"] is None, \
                        f"{where} is optional: make it [\"null\", ...] with \"default\": null"


# -- the checker itself: it passes what is compatible and names what breaks --------------------
# These start from the latest release, so they judge the checker whatever the current schema is.

BREAKING = [
    pytest.param(lambda s: with_new_field(s, {"name": "priority", "type": "string", "doc": "Urgency."}),
                 "priority", "no default", id="new-required-field"),
    pytest.param(lambda s: with_field_type(s, "entities[].start", "string"),
                 "entities[].start", "type changed", id="nested-type-change"),
    pytest.param(lambda s: with_field_type(s, "event_type", "string"),
                 "event_type", "type changed", id="optional-made-required"),
    pytest.param(lambda s: with_field_type(s, "source.partition", ["null", "string"]),
                 "source.partition", "not readable", id="int-to-union-of-string"),
]


@pytest.mark.parametrize("mutate, field, what", BREAKING)
def test_a_breaking_change_fails_naming_the_field_and_what_broke(tmp_path, mutate, field, what):
    releases = history()
    broken = mutate(releases[-1][1])
    problems = avro_compat.check(LEVEL, broken, releases)
    assert len(problems) == len(releases), problems  # against every release: transitive
    for (name, _), problem in zip(releases, problems):
        assert problem.startswith(f"data written with {name}, read with the new schema: {field}: "), problem
        assert what in problem, problem
    # The data agrees: a record written with the release cannot be read with the broken schema
    # (with values in every optional field, or with nulls in them).
    writer = releases[-1][1]
    unreadable = []
    for nulls in (False, True):
        try:
            avro_compat.read(avro_compat.write(writer, avro_compat.sample_datum(writer, nulls=nulls)),
                             writer, broken)
        except SchemaResolutionError:
            unreadable.append(nulls)
    assert unreadable, "the checker said incompatible but every sample record was readable"
    # And so does Java's Avro.
    broken_path = tmp_path / "EnrichedEvent.avsc"
    broken_path.write_text(json.dumps(broken))
    result = run_java("SchemaCompatibilityCheck", broken_path, *history_files(), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"INCOMPATIBLE {history_files()[0]}" in result.stdout.splitlines()


def test_a_compatible_change_passes_and_old_data_gets_defaults(tmp_path):
    releases = history()
    evolved = with_new_field(releases[-1][1], {"name": "language", "type": ["null", "string"], "default": None,
                                       "doc": "Language of the text."})
    evolved = with_field_type(evolved, "source.partition", "long")  # int -> long: a promotion
    assert avro_compat.check(LEVEL, evolved, releases) == []
    for (name, writer), nulls in [(r, n) for r in releases for n in (False, True)]:
        data = avro_compat.write(writer, avro_compat.sample_datum(writer, nulls=nulls))
        filled = assert_survives(avro_compat.read(data, writer, writer), avro_compat.read(data, writer, evolved))
        added = [f["name"] for f in evolved["fields"] if f["name"] not in {g["name"] for g in writer["fields"]}]
        assert filled == added and added[-1] == "language", name  # and what releases since added
        assert avro_compat.read(data, writer, evolved)["language"] is None
    # Old readers cannot read a long partition: the FORWARD levels say so, BACKWARD ones do not care.
    assert avro_compat.check("FORWARD", evolved, releases) == [
        f"data written with the new schema, read by {releases[-1][0]} readers: source.partition: "
        "type changed incompatibly (reader type: int not compatible with writer type: long)"]
    evolved_path = tmp_path / "EnrichedEvent.avsc"
    evolved_path.write_text(json.dumps(evolved))
    result = run_java("SchemaCompatibilityCheck", evolved_path, *history_files(), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- field records and the output schemas composed with them ---------------------------------

def field_record(name: str) -> dict:
    return avro_compat.load(FIELDS_DIR / f"{name}.avsc")


def output_history(name: str, field_releases: list[tuple[str, dict]] | None = None) -> list[tuple[str, dict]]:
    """What the `<output>-value` subject of a topic with field record `name` may hold: every
    plain EnrichedEvent release, then every EnrichedEvent release composed with every release
    of the field record (a superset of the real sequence, so the check is never weaker)."""
    fields = history(name, FIELDS_HISTORY_DIR) if field_releases is None else field_releases
    return history() + [(f"EnrichedEvent.{ev}+{name}.{fv}", compose_enriched(e, f))
                        for ev, e in history() for fv, f in fields]


def write_schemas(directory: Path, schemas: list[tuple[str, dict]]) -> list[Path]:
    paths = []
    for label, schema in schemas:
        paths.append(directory / f"{label}.avsc")
        paths[-1].write_text(json.dumps(schema))
    return paths


def java_check(directory: Path, reader: dict, writers: list[tuple[str, dict]]) -> tuple[int, list[str], list[Path]]:
    """Java's SchemaCompatibilityCheck on schemas written to `directory`."""
    (directory / "w").mkdir(parents=True, exist_ok=True)
    reader_path = directory / "reader.avsc"
    reader_path.write_text(json.dumps(reader))
    writer_paths = write_schemas(directory / "w", writers)
    result = run_java("SchemaCompatibilityCheck", reader_path, *writer_paths, timeout=60)
    return result.returncode, result.stdout.splitlines(), writer_paths


def with_fields_field(record: dict, name: str, new_type) -> dict:
    record = copy.deepcopy(record)
    field = next(f for f in record["fields"] if f["name"] == name)
    field["type"] = new_type
    field.pop("default", None)
    return record


def test_field_records_are_in_the_schema_dir():
    assert "SupportTicketFields" in FIELD_RECORDS


@pytest.mark.parametrize("name", FIELD_RECORDS)
def test_every_field_record_is_released_and_current_is_the_latest(name):
    files = history_files(name, FIELDS_HISTORY_DIR)
    assert files, f"no released versions of {name} in {FIELDS_HISTORY_DIR}"
    assert [int(p.stem.split(".v")[-1]) for p in files] == list(range(1, len(files) + 1))
    assert to_parsing_canonical_form(field_record(name)) == to_parsing_canonical_form(avro_compat.load(files[-1])), (
        f"schemas/fields/{name}.avsc differs from its latest release {files[-1].name}: copy it to "
        f"schemas/history/fields/{name}.v{len(files) + 1}.avsc")


@pytest.mark.parametrize("name", FIELD_RECORDS)
def test_field_record_and_its_output_schema_are_backward_transitive_compatible(name, current, tmp_path):
    problems = avro_compat.check(LEVEL, field_record(name), history(name, FIELDS_HISTORY_DIR))
    assert not problems, f"{name} breaks {LEVEL}:\n  " + "\n  ".join(problems)
    composed = compose_enriched(current, field_record(name))
    releases = output_history(name)
    problems = avro_compat.check(LEVEL, composed, releases)
    assert not problems, f"EnrichedEvent + {name} breaks {LEVEL}:\n  " + "\n  ".join(problems)
    # Java's Avro agrees, on the field record and on the composed output schema.
    code, lines, paths = java_check(tmp_path, composed, releases)
    assert code == 0 and lines == [f"COMPATIBLE {p}" for p in paths], lines
    code, lines, _ = java_check(tmp_path / "alone", field_record(name), history(name, FIELDS_HISTORY_DIR))
    assert code == 0, lines


@pytest.mark.parametrize("nulls", [False, True], ids=["values", "nulls"])
@pytest.mark.parametrize("name", FIELD_RECORDS)
def test_data_of_every_output_release_reads_with_the_current_output_schema(name, nulls, current):
    composed = compose_enriched(current, field_record(name))
    for label, writer in output_history(name):
        data = avro_compat.write(writer, avro_compat.sample_datum(writer, nulls=nulls))
        as_read = avro_compat.read(data, writer, composed)
        filled = assert_survives(avro_compat.read(data, writer, writer), as_read)
        if "+" not in label:  # a plain EnrichedEvent release: the reader fills `fields` with null
            assert "fields" in filled and as_read["fields"] is None, label
        elif not nulls:
            assert as_read["fields"]["summary"] is not None, label


FIELD_BREAKING = [
    pytest.param("refund_amount", ["null", "string"], "not readable", id="nullable-double-to-string"),
    pytest.param("urgency", "string", "type changed", id="enum-to-string"),
    pytest.param("summary", "int", "type changed", id="string-to-int"),
]


@pytest.mark.parametrize("field, new_type, what", FIELD_BREAKING)
def test_changing_a_field_records_type_fails_naming_the_field(field, new_type, what, current, tmp_path):
    name = "SupportTicketFields"
    releases = history(name, FIELDS_HISTORY_DIR)
    broken = with_fields_field(releases[-1][1], field, new_type)
    # The field record alone: the message names the field.
    problems = avro_compat.check(LEVEL, broken, releases)
    assert problems and all(p.startswith(f"data written with {v}, read with the new schema: {field}: ")
                            for p, (v, _) in zip(problems, releases)), problems
    assert all(what in p for p in problems), problems
    # The topic's output schema: every composed release fails, naming `fields.<field>`; the
    # plain EnrichedEvent releases still read (their `fields` is null).
    composed = compose_enriched(current, broken)
    problems = avro_compat.check(LEVEL, composed, output_history(name))
    assert len(problems) == len(history()) * len(releases), problems
    for problem in problems:
        assert "+" in problem.split(",")[0], problem
        assert f", read with the new schema: fields.{field}: " in problem and what in problem, problem
    # Data agrees: a record written with the latest composed release does not read.
    writer = output_history(name)[-1][1]
    with pytest.raises(SchemaResolutionError):
        avro_compat.read(avro_compat.write(writer, avro_compat.sample_datum(writer)), writer, composed)
    # And Java's Avro, on the output schema and on the field record alone.
    code, lines, paths = java_check(tmp_path, composed, output_history(name))
    assert code == 1, lines
    assert [line.split()[0] for line in lines] == ["INCOMPATIBLE" if "+" in p.name else "COMPATIBLE" for p in paths]
    code, lines, _ = java_check(tmp_path / "alone", broken, releases)
    assert code == 1 and all(line.startswith("INCOMPATIBLE ") for line in lines), lines


def test_adding_an_optional_field_to_a_field_record_passes(current, tmp_path):
    name = "SupportTicketFields"
    releases = history(name, FIELDS_HISTORY_DIR)
    evolved = copy.deepcopy(releases[-1][1])
    evolved["fields"].append({"name": "language", "type": ["null", "string"], "default": None,
                              "doc": "Language of the ticket."})
    assert avro_compat.check(LEVEL, evolved, releases) == []
    composed = compose_enriched(current, evolved)
    assert avro_compat.check(LEVEL, composed, output_history(name)) == []
    for label, writer in output_history(name)[len(history()):]:
        data = avro_compat.write(writer, avro_compat.sample_datum(writer))
        fields = avro_compat.read(data, writer, composed)["fields"]
        assert fields["language"] is None and fields["urgency"] == "low", label  # default; symbols[0]
    code, lines, paths = java_check(tmp_path, composed, output_history(name))
    assert code == 0 and lines == [f"COMPATIBLE {p}" for p in paths], lines
    # Made required (no default), the same field fails and is named.
    required = copy.deepcopy(evolved)
    required["fields"][-1] = {"name": "language", "type": "string", "doc": "Language of the ticket."}
    problems = avro_compat.check(LEVEL, compose_enriched(current, required), output_history(name))
    assert problems and all(": fields.language: " in p and "no default" in p for p in problems), problems
