"""Schema compatibility for the Avro contract, decided by Apache Avro's own reader/writer check.

`avro.compatibility.ReaderWriterCompatibilityChecker` (the `avro` package, the Python port of
Java's `org.apache.avro.SchemaCompatibility`) decides whether a reader schema can decode what
a writer schema wrote. This module only applies it in the directions that a Confluent
compatibility level names, and turns its JSON-pointer locations into field paths, so a
failure says which field broke what.

Confluent levels: BACKWARD = the new schema reads data written with the latest old one;
FORWARD = the latest old schema reads data written with the new one; FULL = both; the
_TRANSITIVE variants check against every old version, not only the latest."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import avro.compatibility as avro_compatibility
import avro.schema
import fastavro

LEVELS = ("BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL",
          "FULL_TRANSITIVE", "NONE")


@dataclass(frozen=True)
class Incompatibility:
    kind: str  # avro's SchemaIncompatibilityType name, e.g. reader_field_missing_default_value
    path: str  # the field in the reader schema, e.g. `entities[].score`
    message: str  # avro's message

    def explain(self) -> str:
        what = {
            "reader_field_missing_default_value":
                f"field '{self.message}' is in the reader schema but not in the writer's, and has no "
                "default to fill it with (give it a default, e.g. null in a [\"null\", ...] union)",
            "type_mismatch": f"type changed incompatibly ({self.message})",
            "missing_union_branch": f"a type the writer may write is not readable ({self.message})",
            "name_mismatch": f"named type renamed without an alias ({self.message})",
            "missing_enum_symbols": f"enum symbols removed without an enum default: {self.message}",
            "fixed_size_mismatch": f"fixed size changed ({self.message})",
        }.get(self.kind, self.message)
        return f"{self.path}: {what}"


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def reader_writer_incompatibilities(reader: dict, writer: dict) -> list[Incompatibility]:
    """Can `reader` decode data written with `writer`? [] when it can."""
    created: list[tuple[str, str, str]] = []
    original = avro_compatibility.incompatible

    def recording(kind, message, location):
        # avro merges results into sets of messages and sets of locations; record each
        # incompatibility as it is made, to keep its message with its location.
        result = original(kind, message, location)
        created.append((kind.name, message, next(iter(result.locations))))
        return result

    checker = _Checker()
    with mock.patch.object(avro_compatibility, "incompatible", recording):
        result = checker.get_compatibility(avro.schema.parse(json.dumps(reader)),
                                           avro.schema.parse(json.dumps(writer)))
    if result.compatibility is avro_compatibility.SchemaCompatibilityType.compatible:
        return []
    # Keep the ones that survived into the result (a union tries branches that do not count).
    found = list(dict.fromkeys((k, m, loc) for k, m, loc in created
                               if m in result.messages and loc in result.locations))
    if not found:  # never expected: report avro's result as it is
        return [Incompatibility(",".join(t.name for t in result.incompatibilities),
                                ", ".join(sorted(result.locations)), "; ".join(sorted(result.messages)))]
    return [Incompatibility(k, field_path(reader, loc), m) for k, m, loc in found]


class _Checker(avro_compatibility.ReaderWriterCompatibilityChecker):
    """avro's checker with its locations kept: where a writer is a union it checks each branch
    with the location reset to the root, so a field made non-nullable was reported at `/`.
    Here those calls keep the location of the check that made them. Decisions are unchanged."""

    def __init__(self):
        super().__init__()
        self._where: list[list[str]] = []

    def get_compatibility(self, reader, writer, reference_token="/", location=None):
        if location is None and self._where:
            *location, reference_token = self._where[-1]
        return super().get_compatibility(reader, writer, reference_token, location)

    def calculate_compatibility(self, reader, writer, location):
        self._where.append(location)
        try:
            if reader.type == writer.type == "union":
                return self._unions(reader, writer, location)
            result = super().calculate_compatibility(reader, writer, location)
            if result.compatibility is avro_compatibility.SchemaCompatibilityType.incompatible:
                result = self._named_branch(reader, writer) or result
            return result
        finally:
            self._where.pop()

    def _named_branch(self, reader, writer):
        """A writer record/enum read through a reader union (`["null", Fields]`): avro reports
        only "reader union lacking writer type: RECORD". When the union has a branch of the
        writer's name, that branch's own result says which field broke (the decision is the
        same: no branch was compatible). avro memoized it: this is the check it already ran."""
        if reader.type != "union" or writer.type not in ("record", "enum", "fixed"):
            return None
        same = [b for b in reader.schemas if getattr(b, "fullname", None) == writer.fullname]
        return self.get_compatibility(same[0], writer) if same else None

    def _unions(self, reader, writer, location):
        """avro's union/union rule (every writer branch readable by the reader union), keeping
        a named branch's own reasons instead of "reader union lacking writer type"."""
        result = avro_compatibility.CompatibleResult
        for i, branch in enumerate(writer.schemas):
            compat = self.get_compatibility(reader, branch)
            if compat.compatibility is not avro_compatibility.SchemaCompatibilityType.incompatible:
                continue
            if self._named_branch(reader, branch) is None:
                compat = avro_compatibility.incompatible(
                    avro_compatibility.SchemaIncompatibilityType.missing_union_branch,
                    f"reader union lacking writer type: {branch.type.upper()}", location + [str(i)])
            result = avro_compatibility.merge(result, compat)
        return result


def check(level: str, new: dict, history: list[tuple[str, dict]]) -> list[str]:
    """Every way `new` breaks `level` against the released `history` (oldest first), as
    sentences naming the version, the direction, the field and what broke. [] when compatible."""
    if level not in LEVELS:
        raise ValueError(f"unknown compatibility level {level}")
    if level == "NONE" or not history:
        return []
    base = level.removesuffix("_TRANSITIVE")
    olds = history if level.endswith("_TRANSITIVE") else history[-1:]
    problems = []
    for name, old in olds:
        if base in ("BACKWARD", "FULL"):
            problems += [f"data written with {name}, read with the new schema: {i.explain()}"
                         for i in reader_writer_incompatibilities(new, old)]
        if base in ("FORWARD", "FULL"):
            problems += [f"data written with the new schema, read by {name} readers: {i.explain()}"
                         for i in reader_writer_incompatibilities(old, new)]
    return problems


def field_path(schema: dict, location: str) -> str:
    """avro's location (`/fields/5/type/items/fields/4/type`) -> `entities[].score`."""
    named = _named_types(schema)
    node: object = schema
    path: list[str] = []
    tokens = [t for t in location.split("/") if t]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if isinstance(node, str) and node in named:
            node = named[node]
        if token == "fields" and isinstance(node, dict) and i + 1 < len(tokens):
            field = node["fields"][int(tokens[i + 1])]
            path.append(field["name"])
            node, i = field, i + 2
            continue
        if token == "type" and isinstance(node, dict):
            node = node["type"]
        elif token in ("items", "values") and isinstance(node, dict):
            node = node[token]
            suffix = "[]" if token == "items" else "{}"
            path = path[:-1] + [path[-1] + suffix] if path else [suffix]
        elif token.isdigit() and isinstance(node, list):
            node = node[int(token)]
        elif isinstance(node, list) and token == "fields":
            # Inside a union: the record branch (see _Checker._named_branch). Not consumed.
            records = [named.get(b, b) if isinstance(b, str) else b for b in node if b != "null"]
            node = next(b for b in records if isinstance(b, dict) and "fields" in b)
            continue
        else:  # name, symbols, size: a property of the type reached so far
            path.append(f"({token})")
        i += 1
    return ".".join(path) or f"the record {schema.get('name')}"


def _named_types(schema: object, namespace: str = "", out: dict | None = None) -> dict[str, dict]:
    out = {} if out is None else out
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, namespace, out)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            namespace = schema.get("namespace", namespace)
            name = schema["name"]
            full = name if "." in name else (f"{namespace}.{name}" if namespace else name)
            out[name.rsplit(".", 1)[-1]] = out[full] = schema
            for field in schema.get("fields", []):
                _named_types(field["type"], namespace, out)
        elif isinstance(kind, (dict, list)):
            _named_types(kind, namespace, out)
        else:
            for key in ("items", "values"):
                if key in schema:
                    _named_types(schema[key], namespace, out)
    return out


# -- data: a record written with one schema, read with another (fastavro's schema resolution) --

def sample_datum(schema: object, *, nulls: bool = False, named: dict | None = None,
                 depth: str = "v") -> object:
    """A value for `schema` with every field set: the last non-null branch of each union (or
    null where a union allows it, with `nulls`), one item in each array and map."""
    named = _named_types(schema) if named is None else named
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        if nulls and "null" in schema:
            return None
        branches = [b for b in schema if b != "null"] or schema
        return sample_datum(branches[-1], nulls=nulls, named=named, depth=depth)
    kind = schema["type"] if isinstance(schema, dict) else schema
    if isinstance(kind, (dict, list)):
        return sample_datum(kind, nulls=nulls, named=named, depth=depth)
    simple = {"null": None, "boolean": True, "int": 7, "long": 1_714_557_600_123, "float": 0.5,
              "double": 0.25, "bytes": b"\x01\x02", "string": f"{depth}-\u00e9"}
    if kind in simple:
        return simple[kind]
    if kind in ("record", "error"):
        return {f["name"]: sample_datum(f["type"], nulls=nulls, named=named, depth=f"{depth}.{f['name']}")
                for f in schema["fields"]}
    if kind == "array":
        return [sample_datum(schema["items"], nulls=nulls, named=named, depth=depth + "[0]")]
    if kind == "map":
        return {"k": sample_datum(schema["values"], nulls=nulls, named=named, depth=depth + "{k}")}
    if kind == "enum":
        return schema["symbols"][0]
    if kind == "fixed":
        return b"\x00" * schema["size"]
    raise ValueError(f"no sample for Avro type {kind!r}")


def write(schema: dict, datum: object) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), datum)
    return buf.getvalue()


def read(data: bytes, writer: dict, reader: dict) -> object:
    return fastavro.schemaless_reader(io.BytesIO(data), fastavro.parse_schema(writer),
                                      fastavro.parse_schema(reader))
