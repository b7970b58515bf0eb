"""`streams eval`: the engines' accuracy on a hand-labelled set, in process (no Kafka).

The set is `streams/eval_data/labelled.jsonl`: support tickets and order notes written for this
purpose (not the bundled samples, not the bench's templates), one JSON object a line: `id`,
`topic`, `text`, `label`, `entities` ([{"type", "text"}], each text a substring of the text) and
`fields` (for a topic with a field record, the values a careful human writes; else null).

The engines are loaded as the worker loads them (`runtime.load_engine(runtime.load_engines, ...)`,
on the one inference thread), from the configured settings (models, device, dtype, LLM options),
with the eval's own routes: the built-in labels, which the truth uses. `--engine encoder`: every
topic on the encoder models. `--engine llm`: support tickets as `streams demo --llm` runs them
(label from the LLM, typed fields `SupportTicketFields`, entities from the encoder NER unless
`--llm-entities`), order notes on the encoder models.

What the tables print and `--json` writes:

- **Label accuracy**: events whose label is the truth / events, per topic and overall. An event
  the engine failed on (an LLM output cut off: the worker dead-letters it) counts as wrong, with
  no entities and every field null.
- **Typed fields**, per field of the topic's field record, over that topic's events. A value is
  *correct* when it equals the truth: numbers within 0.005; strings case-insensitively after
  stripping whitespace and a leading "#" ("#55190" is order 55190); null equals only null.
  precision = correct non-null predictions / non-null predictions;
  recall = correct non-null predictions / non-null truths;
  null accuracy = null predictions where the truth is null / null truths (nullable fields only);
  accuracy = correct predictions, null = null included / events.
  A free-text field (a plain string that cannot be null and is not grounded: the summary) is not
  scored: no two people write the same sentence.
- **Grounding**: per field that names a value of the text (a nullable string or number: an order
  id, an amount), the share of non-null predicted values that occur in the text, by the
  engine's own check (streams/engine/grounding.py: strings case-insensitively on word
  boundaries, numbers in any common format: "$84.20", "49,99", "1,299.00"). `grounded` says
  whether the field record marks the field `"grounded": true`: the engine then nulls a value it
  cannot find, so its share is 1 by construction and what grounding costs shows as recall;
  an ungrounded field's shortfall is what the model made up.
- **Entities**: per event, the predicted and true (type, text) pairs as multisets, texts compared
  case-insensitively after stripping whitespace; TP = pairs in both; precision = TP / predicted,
  recall = TP / true, F1 = 2 TP / (predicted + true) (their harmonic mean, and 0 rather than
  undefined when a type is never predicted); per type and overall (counts summed over types).
- **Calibration**, per topic (its label may come from either model): predictions grouped by
  confidence decile ([0, 0.1), ..., [0.9, 1.0]); per decile the count, mean confidence and
  accuracy. Labels by the label's score; fields by the engine's `field_confidence` (the
  probability it gave each field's value) when it gives one, one point per scored field per event.

A ratio with a zero denominator is None ("-" in the tables).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .settings import (LLM_DEMO_TOPICS, ORDER_NOTE_LABELS, SUPPORT_TICKET_LABELS, Settings,
                       TopicRoute)

DATA_FILE = "labelled.jsonl"
ENGINES = ("encoder", "llm")
TOLERANCE = 0.005  # numbers equal within this (money to the cent, with float noise)
DECILES = 10
CHUNK = 16  # events per engine call: a progress line each (the LLM batches inside a call)

# The eval's topics and their labels: the built-in ones, which the truth is written against.
TOPIC_LABELS = {"support.tickets": SUPPORT_TICKET_LABELS, "orders.notes": ORDER_NOTE_LABELS}


@dataclass(frozen=True)
class Example:
    id: str
    topic: str
    text: str
    label: str
    entities: tuple[tuple[str, str], ...]  # (type, text)
    fields: dict | None


@dataclass(frozen=True)
class Prediction:
    """What an engine said of one event; `error` (its reason) when it failed on it."""

    label: str | None = None
    score: float | None = None
    entities: tuple[tuple[str, str], ...] = ()
    fields: dict | None = None
    field_confidence: dict[str, float] | None = None
    error: str | None = None


@dataclass(frozen=True)
class FieldSpec:
    """One field of a field record, as the scoring sees it."""

    name: str
    kind: str  # "enum", "string", "number", "boolean"
    nullable: bool
    grounded: bool  # the record marks it "grounded": true

    @property
    def free_text(self) -> bool:
        return self.kind == "string" and not self.nullable and not self.grounded

    @property
    def names_a_value(self) -> bool:
        """A value the text itself writes (an id, an amount): checked for occurring in it."""
        return self.grounded or (self.nullable and self.kind in ("string", "number"))


# ---- the data set -------------------------------------------------------------------------------

def load_examples(path: Path | None = None) -> list[Example]:
    """The labelled set: `path`, else the bundled `streams/eval_data/labelled.jsonl`."""
    source = Path(path) if path is not None else resources.files("streams.eval_data").joinpath(DATA_FILE)
    text = source.read_text(encoding="utf-8")
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        out.append(Example(row["id"], row["topic"], row["text"], row["label"],
                           tuple((e["type"], e["text"]) for e in row.get("entities") or []),
                           row.get("fields")))
    return out


def entity_types() -> list[str]:
    """Rampart's types: the default of `STREAMS_LLM_ENTITY_TYPES`, the one list of them."""
    return Settings.model_fields["llm_entity_types"].default_factory()


def field_records(routes: Iterable[TopicRoute], schema_dir: Path) -> dict[str, dict]:
    """Topic -> its field record (parsed Avro), for the routes that declare one."""
    from .serde.fields import load_field_record

    return {r.input: load_field_record(schema_dir, r.fields) for r in routes if r.fields}


def validate_examples(examples: Sequence[Example], schema_dir: Path) -> list[str]:
    """What is wrong with a labelled set (empty: nothing): unknown topics, labels or entity
    types, entity texts not in the text, fields not valid for the topic's field record (the
    LLM route's), fields on a topic without one."""
    import fastavro

    records = field_records(eval_routes("llm"), schema_dir)
    parsed = {t: fastavro.parse_schema(r) for t, r in records.items()}
    types = set(entity_types())
    problems = []
    ids = Counter(e.id for e in examples)
    problems += [f"{i}: id used {n} times" for i, n in ids.items() if n > 1]
    for e in examples:
        if e.topic not in TOPIC_LABELS:
            problems.append(f"{e.id}: unknown topic {e.topic!r}")
            continue
        if e.label not in TOPIC_LABELS[e.topic]:
            problems.append(f"{e.id}: {e.label!r} is not a label of {e.topic}")
        for kind, text in e.entities:
            if kind not in types:
                problems.append(f"{e.id}: unknown entity type {kind!r}")
            if not text or text not in e.text:
                problems.append(f"{e.id}: entity {text!r} is not in the text")
        if e.topic in parsed:
            if not isinstance(e.fields, dict) or not fastavro.validate(e.fields, parsed[e.topic],
                                                                       raise_errors=False):
                problems.append(f"{e.id}: fields {e.fields!r} are not valid {records[e.topic]['name']}")
        elif e.fields is not None:
            problems.append(f"{e.id}: {e.topic} has no field record, fields must be null")
    return problems


def field_specs(record: dict) -> list[FieldSpec]:
    """Each field of an Avro field record: its kind, whether it may be null, whether grounded."""
    out = []
    for f in record["fields"]:
        t = f["type"]
        nullable = isinstance(t, list) and "null" in t
        inner = next((b for b in t if b != "null"), t) if isinstance(t, list) else t
        kind = inner.get("type") if isinstance(inner, dict) else inner
        kind = {"double": "number", "float": "number", "int": "number", "long": "number"}.get(kind, kind)
        out.append(FieldSpec(f["name"], kind, nullable, f.get("grounded") is True))
    return out


# ---- running the engines ------------------------------------------------------------------------

def eval_routes(engine: str, llm_entities: bool = False) -> list[TopicRoute]:
    """The eval's topics with the built-in labels: all on the encoder models, or (llm) support
    tickets as `streams demo --llm` runs them, entities from the LLM too with `llm_entities`."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == "encoder":
        return [TopicRoute(input=t, labels=labels) for t, labels in TOPIC_LABELS.items()]
    routes = [TopicRoute(**r) for r in LLM_DEMO_TOPICS]
    if llm_entities:
        routes = [r.model_copy(update={"entities_from": "llm"}) if r.label_from == "llm" or r.fields
                  else r for r in routes]
    return routes


def predict(settings: Settings, examples: Sequence[Example],
            progress: Callable[[str, int, int], None] | None = None) -> tuple[list[Prediction], dict]:
    """Load the engines `settings.topics` need as the worker does, run every example of each topic
    through them, in chunks; the predictions in `examples`' order and what ran (models, device,
    seconds)."""
    from .engine import LabelSet
    from .engine.thread import inference_thread
    from .runtime import load_engine, load_engines

    started = time.perf_counter()
    engine = inference_thread.call(load_engine, load_engines, settings, None)
    load_seconds = time.perf_counter() - started
    out: list[Prediction | None] = [None] * len(examples)
    infer_started = time.perf_counter()
    try:
        for route in settings.topics:
            labels = LabelSet.from_mapping(route.labels)
            todo = [i for i, e in enumerate(examples) if e.topic == route.input]
            for at in range(0, len(todo), CHUNK):
                chunk = todo[at:at + CHUNK]
                results = inference_thread.infer(engine.infer, [examples[i].text for i in chunk],
                                                 labels, route.input)
                for i, r in zip(chunk, results):
                    out[i] = to_prediction(r)
                if progress is not None:
                    progress(route.input, at + len(chunk), len(todo))
        meta = {"device": str(engine.device), "load_seconds": round(load_seconds, 1),
                "infer_seconds": round(time.perf_counter() - infer_started, 1),
                "models": {r.input: [{"task": m.task, "name": m.name, "version": m.version}
                                     for m in engine.models_for(r.input)] for r in settings.topics}}
    finally:
        inference_thread.call(engine.close)
    missing = [examples[i].topic for i, p in enumerate(out) if p is None]
    if missing:
        raise ValueError(f"no configured route for topic(s) {sorted(set(missing))}")
    return out, meta  # type: ignore[return-value]


def to_prediction(result) -> Prediction:
    """An engine's result (an `Inference`, or the event's own exception) as a `Prediction`."""
    if isinstance(result, Exception):
        return Prediction(error=getattr(result, "reason", type(result).__name__))
    c = result.classification
    confidence = getattr(result, "field_confidence", None)  # newer engines only
    return Prediction(c.label, c.score, tuple((e.label, e.text) for e in result.entities),
                      dict(result.fields) if result.fields is not None else None,
                      dict(confidence) if confidence else None)


# ---- comparing values ---------------------------------------------------------------------------

def _norm(text: str) -> str:
    return text.strip().lstrip("#").strip().casefold()


def values_equal(predicted, truth) -> bool:
    """Null only equals null; numbers within TOLERANCE; strings as `_norm` leaves them."""
    if predicted is None or truth is None:
        return predicted is None and truth is None
    if isinstance(truth, bool) or isinstance(predicted, bool):
        return predicted is truth
    if isinstance(truth, (int, float)) and isinstance(predicted, (int, float)):
        return abs(predicted - truth) <= TOLERANCE + 1e-9
    if isinstance(truth, str) and isinstance(predicted, str):
        return _norm(predicted) == _norm(truth)
    return False


def occurs_in(value, text: str) -> bool:
    """Whether a field's value is written in the text: the engine's own grounding check
    (streams/engine/grounding.py: strings on word boundaries, numbers in any common format)."""
    from .engine.grounding import grounded

    return grounded(value, text)


# ---- scoring ------------------------------------------------------------------------------------

def ratio(num: int | float, den: int | float) -> float | None:
    return num / den if den else None


def label_scores(examples: Sequence[Example], preds: Sequence[Prediction]) -> dict:
    per_topic: dict[str, dict] = {}
    for e, p in zip(examples, preds):
        t = per_topic.setdefault(e.topic, {"events": 0, "correct": 0, "failed": 0})
        t["events"] += 1
        t["correct"] += p.label == e.label
        t["failed"] += p.error is not None
    for t in per_topic.values():
        t["accuracy"] = ratio(t["correct"], t["events"])
    events, correct = sum(t["events"] for t in per_topic.values()), sum(t["correct"] for t in per_topic.values())
    return {"per_topic": per_topic, "overall": {"events": events, "correct": correct,
                                                "accuracy": ratio(correct, events)}}


def field_scores(truths: Sequence[dict], preds: Sequence[dict | None], specs: Sequence[FieldSpec]) -> dict:
    """Per scored field: precision, recall, null accuracy and accuracy (module docstring);
    a missing prediction (`None`) is every field null."""
    out = {}
    for spec in specs:
        if spec.free_text:
            continue
        c = Counter()
        for truth, pred in zip(truths, preds):
            t, p = truth.get(spec.name), (pred or {}).get(spec.name)
            right = values_equal(p, t)
            c["events"] += 1
            c["correct"] += right
            c["predicted_non_null"] += p is not None
            c["true_non_null"] += t is not None
            c["correct_non_null"] += right and p is not None
            c["true_null"] += t is None
            c["correct_null"] += t is None and p is None
        out[spec.name] = dict(c) | {
            "precision": ratio(c["correct_non_null"], c["predicted_non_null"]),
            "recall": ratio(c["correct_non_null"], c["true_non_null"]),
            "null_accuracy": ratio(c["correct_null"], c["true_null"]) if spec.nullable else None,
            "accuracy": ratio(c["correct"], c["events"])}
    return out


def grounding_scores(texts: Sequence[str], preds: Sequence[dict | None], specs: Sequence[FieldSpec]) -> dict:
    """Per field that names a value of the text: the share of its non-null predictions found in
    the text, and whether the record marks it grounded."""
    out = {}
    for spec in specs:
        if not spec.names_a_value:
            continue
        values = [(text, (pred or {}).get(spec.name)) for text, pred in zip(texts, preds)]
        given = [(text, v) for text, v in values if v is not None]
        found = sum(occurs_in(v, text) for text, v in given)
        out[spec.name] = {"grounded": spec.grounded, "non_null": len(given), "in_text": found,
                          "share": ratio(found, len(given))}
    return out


def entity_scores(truths: Sequence[Iterable[tuple[str, str]]],
                  preds: Sequence[Iterable[tuple[str, str]]]) -> dict:
    """Precision, recall and F1 of (type, text) pairs, per type and overall (module docstring)."""
    tally: dict[str, Counter] = {}
    for truth, pred in zip(truths, preds):
        t = Counter((k, _norm_entity(v)) for k, v in truth)
        p = Counter((k, _norm_entity(v)) for k, v in pred)
        for (kind, _), n in t.items():
            tally.setdefault(kind, Counter())["true"] += n
        for (kind, _), n in p.items():
            tally.setdefault(kind, Counter())["predicted"] += n
        for (kind, _), n in (t & p).items():
            tally[kind]["tp"] += n
    per_type = {kind: _prf(c) for kind, c in sorted(tally.items())}
    return {"per_type": per_type, "overall": _prf(sum(tally.values(), Counter()))}


def _norm_entity(text: str) -> str:
    return text.strip().casefold()


def _prf(c: Counter) -> dict:
    tp, predicted, true = c["tp"], c["predicted"], c["true"]
    p, r = ratio(tp, predicted), ratio(tp, true)
    return {"true": true, "predicted": predicted, "tp": tp, "precision": p, "recall": r,
            "f1": ratio(2 * tp, predicted + true)}


def calibration(points: Iterable[tuple[float, bool]], bins: int = DECILES) -> list[dict]:
    """(confidence, correct) pairs by confidence decile: the non-empty ones, lowest first."""
    grouped: dict[int, list[tuple[float, bool]]] = {}
    for confidence, correct in points:
        b = min(int(math.floor(confidence * bins)), bins - 1) if confidence > 0 else 0
        grouped.setdefault(b, []).append((confidence, correct))
    return [{"from": b / bins, "to": (b + 1) / bins, "n": len(pts),
             "mean_confidence": sum(c for c, _ in pts) / len(pts),
             "accuracy": sum(ok for _, ok in pts) / len(pts)} for b, pts in sorted(grouped.items())]


def score(examples: Sequence[Example], preds: Sequence[Prediction], routes: Sequence[TopicRoute],
          records: dict[str, dict]) -> dict:
    """Every figure of the module docstring, as one JSON-able dict."""
    sources = {r.input: {"label": r.label_from, "entities": r.entities_from,
                         "fields": r.fields} for r in routes}
    report: dict = {"events": len(examples), "routes": sources,
                    "failures": dict(Counter(p.error for p in preds if p.error is not None)),
                    "labels": label_scores(examples, preds), "fields": {}, "grounding": {}}
    label_points: dict[str, list[tuple[float, bool]]] = {}  # per topic: its labels' model
    for e, p in zip(examples, preds):
        if p.score is not None:
            label_points.setdefault(e.topic, []).append((p.score, p.label == e.label))
    field_points: dict[str, list[tuple[float, bool]]] = {}
    for topic, record in records.items():
        rows = [(e, p) for e, p in zip(examples, preds) if e.topic == topic]
        specs = field_specs(record)
        truths, fields = [e.fields or {} for e, _ in rows], [p.fields for _, p in rows]
        report["fields"][topic] = {"record": record["name"], "scores": field_scores(truths, fields, specs),
                                   "not_scored": [s.name for s in specs if s.free_text]}
        report["grounding"][topic] = grounding_scores([e.text for e, _ in rows], fields, specs)
        scored = {s.name for s in specs if not s.free_text}
        for (e, p), truth in zip(rows, truths):
            for name, confidence in (p.field_confidence or {}).items():
                if name in scored:
                    field_points.setdefault(topic, []).append(
                        (confidence, values_equal((p.fields or {}).get(name), truth.get(name))))
    report["entities"] = entity_scores([e.entities for e in examples], [p.entities for p in preds])
    report["calibration"] = {"labels": {t: calibration(pts) for t, pts in label_points.items()},
                             "fields": {t: calibration(pts) for t, pts in field_points.items()}}
    report["per_event"] = [{"id": e.id, "topic": e.topic, "label": e.label, "predicted": p.label,
                            "score": p.score, "fields": p.fields, "field_confidence": p.field_confidence,
                            "entities": [list(x) for x in p.entities], "error": p.error}
                           for e, p in zip(examples, preds)]
    return report


def evaluate(engine: str, *, llm_entities: bool = False, data: Path | None = None, limit: int = 0,
             settings: Settings | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run `engine` on the labelled set and score it: the report `streams eval` prints."""
    examples = load_examples(data)
    if limit:  # the first `limit` events of each topic: a quick look
        seen: Counter = Counter()
        kept = []
        for e in examples:
            seen[e.topic] += 1
            if seen[e.topic] <= limit:
                kept.append(e)
        examples = kept
    routes = eval_routes(engine, llm_entities)
    if settings is None:
        configured = Settings(topics=routes)
    else:
        configured = settings.model_copy(update={"topics": routes})
        configured.__dict__.pop("routes", None)  # the cached_property of the old topics
    preds, meta = predict(configured, examples, progress)
    report = score(examples, preds, routes, field_records(routes, configured.schema_dir))
    return {"engine": engine, "llm_entities": llm_entities,
            "data": str(data) if data else f"streams/eval_data/{DATA_FILE}"} | meta | report


# ---- tables -------------------------------------------------------------------------------------

def figure(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def tables(report: dict) -> list:
    """The report as rich tables, in the order `streams eval` prints them."""
    from rich.table import Table

    out = []
    labels = Table(title=f"Label accuracy ({report['engine']} engine)")
    for col in ("topic", "label from", "events", "correct", "accuracy"):
        labels.add_column(col, justify="left" if col in ("topic", "label from") else "right")
    for topic, t in report["labels"]["per_topic"].items():
        labels.add_row(topic, report["routes"][topic]["label"], str(t["events"]), str(t["correct"]),
                       figure(t["accuracy"]))
    o = report["labels"]["overall"]
    labels.add_row("overall", "", str(o["events"]), str(o["correct"]), figure(o["accuracy"]))
    out.append(labels)
    for topic, f in report["fields"].items():
        t = Table(title=f"Typed fields ({topic}, {f['record']}; not scored: "
                        f"{', '.join(f['not_scored']) or 'none'})")
        for col in ("field", "precision", "recall", "null accuracy", "accuracy", "predicted non-null",
                    "true non-null"):
            t.add_column(col, justify="left" if col == "field" else "right")
        for name, s in f["scores"].items():
            t.add_row(name, figure(s["precision"]), figure(s["recall"]), figure(s["null_accuracy"]), figure(s["accuracy"]),
                      str(s["predicted_non_null"]), str(s["true_non_null"]))
        out.append(t)
    for topic, g in report["grounding"].items():
        t = Table(title=f"Grounding ({topic}): non-null predicted values found in the text")
        for col in ("field", "grounded in record", "non-null", "in text", "share"):
            t.add_column(col, justify="left" if col == "field" else "right")
        for name, s in g.items():
            t.add_row(name, "yes" if s["grounded"] else "no", str(s["non_null"]), str(s["in_text"]),
                      figure(s["share"]))
        out.append(t)
    sources = sorted({r["entities"] for r in report["routes"].values()})
    ents = Table(title=f"Entities by (type, text), from {' and '.join(sources)}")
    for col in ("type", "true", "predicted", "TP", "precision", "recall", "F1"):
        ents.add_column(col, justify="left" if col == "type" else "right")
    for kind, s in [*report["entities"]["per_type"].items(), ("overall", report["entities"]["overall"])]:
        ents.add_row(kind, str(s["true"]), str(s["predicted"]), str(s["tp"]), figure(s["precision"]),
                     figure(s["recall"]), figure(s["f1"]))
    out.append(ents)
    for what, per_topic in report["calibration"].items():
        for topic, bins in per_topic.items():
            source = report["routes"][topic]["label"] if what == "labels" else "llm"
            t = Table(title=f"Calibration: {topic} {what} ({source}) by confidence decile")
            for col in ("confidence", "n", "mean confidence", "accuracy"):
                t.add_column(col, justify="right")
            for b in bins:
                t.add_row(f"{b['from']:.1f}-{b['to']:.1f}", str(b["n"]), figure(b["mean_confidence"]),
                          figure(b["accuracy"]))
            out.append(t)
    return out
