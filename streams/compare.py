"""Compare two enriched topics event by event: `streams compare A B`.

A is the reference (the live output, say), B the candidate (a replay's `--output-topic` made
with another model or label set, a shadow topic). Both are read as `streams replay` reads a
range (`replay.plan` and `replay.read_records`: partitions assigned, no consumer group
commits, each partition read up to its end when the command started, never waiting for more),
decoded with the schema catalog, and joined by (input topic, event id). Per input topic (the
records' `source.topic`):

- **joined / only in A / only in B**, after dropping duplicates: a topic written at least once
  may hold an event twice; the last record by offset is kept (by `processed_at` where the two
  lie in different partitions) and the dropped ones are counted per side.
- **labels**: agreement = joined events whose top labels are equal / joined events, and the
  confusion table, A's label in rows and B's in columns.
- **score shift** where the top labels agree: the absolute difference of the top label's score,
  its mean, p95 (nearest rank) and maximum, and the mean signed shift (B - A).
- **entities**: spans (label, start, end) of B against those of A as the truth, counted as
  multisets per event: precision = matched / B's spans, recall = matched / A's spans,
  F1 = 2 matched / (A's + B's), per entity label and overall (`eval.entity_scores`).
- **typed fields** (the `fields` record, when either side has one): per field, over the joined
  events where either side has `fields`, the share of equal values (null equals null) and the
  share null on each side.
- the models (task:name@version) each side's records name.

Records that cannot be used are counted per side, never fatal: a value the client or the
schema catalog cannot decode, a tombstone, a decoded value that is not an EnrichedEvent.
A time range (`--from`/`--to`) selects by the *input* event's time (`source.timestamp`, the
enriched record's own Kafka timestamp where it has none), so the live output and a replay made
later select the same events; reading starts where the enriched topic's own timestamps reach
`--from` (an enriched record is written after its input). A ratio with a zero denominator is
None ("-" when printed). Nothing here logs or prints event text.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import NamedTuple, Sequence

from . import replay as rp
from .agreement import spans
from .eval import figure as fmt
from .eval import entity_scores, ratio
from .kafka import consumer
from .settings import Settings

log = logging.getLogger(__name__)

SAMPLE_IDS = 10  # event ids kept per kind of difference, for a look with `streams tail`
BATCH = 1000


class Enriched(NamedTuple):
    """One decoded record of an enriched topic and where it was read."""

    partition: int
    offset: int
    record: dict


@dataclass
class Side:
    """What was read of one enriched topic: the decoded records in range (duplicates included)
    and the counts of what was left out."""

    topic: str
    records: list[Enriched] = field(default_factory=list)
    read: int = 0  # every record read, whatever became of it
    undecodable: Counter = field(default_factory=Counter)  # reason -> records
    outside: int = 0  # decoded, but the input event's time is outside the range


@dataclass
class TopicComparison:
    input_topic: str
    joined: int
    only_a: int
    only_b: int
    duplicates_a: int
    duplicates_b: int
    label_agreement: float | None
    confusion: dict[str, dict[str, int]]  # A's label -> B's label -> events
    score_shift: dict  # n, mean_abs, p95_abs, max_abs, mean_signed (B - A), where labels agree
    entities: dict  # eval.entity_scores: per_type and overall, A as "true", B as "predicted"
    fields: dict[str, dict]  # field -> n, equal, null_a, null_b (shares of n)
    models_a: list[str]
    models_b: list[str]
    samples: dict[str, list[str]]  # only_a, only_b, label_differs: a few event ids each


@dataclass
class Comparison:
    a: str
    b: str
    read_a: int
    read_b: int
    undecodable_a: dict[str, int]
    undecodable_b: dict[str, int]
    outside_a: int
    outside_b: int
    unusable_a: int  # decoded, but no event id / input topic: counted with the undecodable
    unusable_b: int
    topics: list[TopicComparison]

    def to_json(self) -> dict:
        return asdict(self)


# --- the pure part: decoded records in, figures out ------------------------------------------

def compare(a: Side, b: Side) -> Comparison:
    """Join A's and B's records by (input topic, event id) and compute the figures (module
    docstring); no I/O."""
    kept_a, dups_a, bad_a = _latest(a.records)
    kept_b, dups_b, bad_b = _latest(b.records)
    inputs = sorted({t for t, _ in kept_a} | {t for t, _ in kept_b})
    topics = []
    for topic in inputs:
        side_a = {eid: r for (t, eid), r in kept_a.items() if t == topic}
        side_b = {eid: r for (t, eid), r in kept_b.items() if t == topic}
        topics.append(_compare_topic(topic, side_a, side_b, dups_a[topic], dups_b[topic]))
    return Comparison(a.topic, b.topic, a.read, b.read, dict(a.undecodable), dict(b.undecodable),
                      a.outside, b.outside, bad_a, bad_b, topics)


def _key(record: dict) -> tuple[str, str] | None:
    try:
        topic, eid = record["source"]["topic"], record["event_id"]
        record["classification"]["label"]
    except (KeyError, TypeError):
        return None
    return (topic, eid) if isinstance(topic, str) and isinstance(eid, str) else None


def _latest(records: Sequence[Enriched]) -> tuple[dict[tuple[str, str], dict], Counter, int]:
    """One record per (input topic, event id): the last by offset (by processed_at across
    partitions); the duplicates dropped per input topic; records without a key."""
    kept: dict[tuple[str, str], Enriched] = {}
    dropped: Counter = Counter()
    unusable = 0
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        key = _key(rec.record)
        if key is None:
            unusable += 1
            continue
        old = kept.get(key)
        if old is not None:
            dropped[key[0]] += 1
            if old.partition != rec.partition and _processed(old.record) > _processed(rec.record):
                continue
        kept[key] = rec
    return {k: r.record for k, r in kept.items()}, dropped, unusable


def _processed(record: dict) -> float:
    value = record.get("processed_at")
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value) if isinstance(value, (int, float)) else float("-inf")


def _compare_topic(topic: str, a: dict[str, dict], b: dict[str, dict], dups_a: int, dups_b: int
                   ) -> TopicComparison:
    joined = sorted(set(a) & set(b))
    confusion: dict[str, Counter] = {}
    shifts: list[float] = []
    differs: list[str] = []
    spans_a, spans_b = [], []
    for eid in joined:
        ca, cb = a[eid]["classification"], b[eid]["classification"]
        confusion.setdefault(ca["label"], Counter())[cb["label"]] += 1
        if ca["label"] == cb["label"]:
            shifts.append(float(cb["score"]) - float(ca["score"]))
        else:
            differs.append(eid)
        spans_a.append(spans(a[eid]))  # eval.entity_scores: the position is the "text"
        spans_b.append(spans(b[eid]))
    agreed = len(shifts)
    return TopicComparison(
        input_topic=topic, joined=len(joined), only_a=len(set(a) - set(b)), only_b=len(set(b) - set(a)),
        duplicates_a=dups_a, duplicates_b=dups_b, label_agreement=ratio(agreed, len(joined)),
        confusion={la: dict(sorted(row.items())) for la, row in sorted(confusion.items())},
        score_shift=score_shift(shifts), entities=entity_scores(spans_a, spans_b),
        fields=field_agreement([(a[eid].get("fields"), b[eid].get("fields")) for eid in joined]),
        models_a=_models(a.values()), models_b=_models(b.values()),
        samples={"only_a": sorted(set(a) - set(b))[:SAMPLE_IDS],
                 "only_b": sorted(set(b) - set(a))[:SAMPLE_IDS], "label_differs": differs[:SAMPLE_IDS]})


def score_shift(shifts: Sequence[float]) -> dict:
    """Signed shifts (B - A) -> n, mean of the absolute shift, its p95 (nearest rank) and max,
    and the mean signed shift; None figures where n is 0."""
    n = len(shifts)
    if not n:
        return {"n": 0, "mean_abs": None, "p95_abs": None, "max_abs": None, "mean_signed": None}
    absolute = sorted(abs(s) for s in shifts)
    return {"n": n, "mean_abs": sum(absolute) / n, "p95_abs": absolute[math.ceil(0.95 * n) - 1],
            "max_abs": absolute[-1], "mean_signed": sum(shifts) / n}


def field_agreement(pairs: Sequence[tuple[dict | None, dict | None]]) -> dict[str, dict]:
    """Per typed field, over the pairs where either side has a `fields` record (a side without
    one has every field null): n, and the shares equal (null equals null), null in A, null in B."""
    pairs = [(fa or {}, fb or {}) for fa, fb in pairs if fa is not None or fb is not None]
    names = sorted({k for fa, fb in pairs for k in (*fa, *fb)})
    out = {}
    for name in names:
        values = [(fa.get(name), fb.get(name)) for fa, fb in pairs]
        n = len(values)
        out[name] = {"n": n, "equal": ratio(sum(va == vb for va, vb in values), n),
                     "null_a": ratio(sum(va is None for va, _ in values), n),
                     "null_b": ratio(sum(vb is None for _, vb in values), n)}
    return out


def _models(records) -> list[str]:
    return sorted({f"{m['task']}:{m['name']}@{m['version']}" for r in records for m in r.get("models") or ()})


# --- reading ------------------------------------------------------------------------------------

def catalog_for(settings: Settings, topics: Sequence[str]):
    """The schema catalog that decodes these topics. A `mock://` registry lives in one process
    and numbers schemas in registration order: a topic that is not a configured output (a
    replay's --output-topic) is registered after the configured subjects, as the replay that
    wrote it registered it, with the schema of a configured output among `topics` (else the
    plain EnrichedEvent). A real registry already holds every writer schema by id: nothing more
    is registered there."""
    from .serde import SchemaCatalog

    catalog = SchemaCatalog.from_settings(settings)
    catalog.ensure_registered()
    if settings.schema_registry_url.startswith("mock://"):
        like = next((t for t in topics if t in catalog.output_topics), None)
        for topic in dict.fromkeys(topics):
            catalog.register_output(topic, like=like)
    return catalog


def read_enriched(settings: Settings, topic: str, start_ms: int | None = None, end_ms: int | None = None,
                  catalog=None) -> Side:
    """Every record of `topic` up to each partition's end when called, decoded; those whose input
    event's time is outside [start_ms, end_ms) counted, not kept. Raises ValueError for a topic
    that does not exist."""
    catalog = catalog or catalog_for(settings, [topic])
    start, end = start_ms or 0, end_ms if end_ms is not None else 2 ** 62
    ranges = rp.plan(settings, topic, start, None, None)
    side = Side(topic)
    cons = consumer(settings, f"streams-compare-{uuid.uuid4().hex[:8]}", **rp.READER_CONF)
    try:
        for batch in rp.read_records(cons, topic, ranges, batch_size=BATCH, resume=False,
                                     refetches=settings.undecodable_refetches):
            for r in batch:
                side.read += 1
                record = _decode(catalog, r, side)
                if record is None:
                    continue
                if not rp.in_range(_event_time(record, r.timestamp_ms), start, end):
                    side.outside += 1
                    continue
                side.records.append(Enriched(r.partition, r.offset, _slim(record)))
    finally:
        cons.close()
    return side


def _decode(catalog, r, side: Side) -> dict | None:
    if r.client_error is not None:
        reason = "client cannot decode"
    elif r.value is None:
        reason = "no value (tombstone)"
    else:
        try:
            return catalog.decode(r.value, r.topic)
        except Exception as exc:  # noqa: BLE001 - counted, never fatal; no bytes in the log
            reason = type(exc).__name__
    side.undecodable[reason] += 1
    log.debug("%s[%s]@%s not decoded: %s", r.topic, r.partition, r.offset, reason)
    return None


def _slim(record: dict) -> dict:
    """What the figures use, and no text (an entity's text, the redacted text): less to hold for
    a large range, nothing that could be printed by mistake."""
    out = {k: record[k] for k in ("event_id", "classification", "models", "processed_at", "fields")
           if k in record}
    source = record.get("source")
    out["source"] = {"topic": source.get("topic")} if isinstance(source, dict) else source
    if isinstance(record.get("entities"), list):
        out["entities"] = [{k: e.get(k) for k in ("label", "start", "end")} for e in record["entities"]
                           if isinstance(e, dict)]
    return out


def _event_time(record: dict, kafka_ms: int | None) -> int | None:
    source = record.get("source")
    ts = source.get("timestamp") if isinstance(source, dict) else None
    if isinstance(ts, datetime):
        return rp.to_ms(ts)
    return ts if isinstance(ts, int) else kafka_ms


# --- output -------------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def report(c: Comparison) -> list:
    """The comparison as lines and rich tables, in the order `streams compare` prints them."""
    from rich.markup import escape as e_
    from rich.table import Table

    def bad(reasons: dict[str, int], unusable: int) -> str:
        total = sum(reasons.values()) + unusable
        parts = [f"{n} {why}" for why, n in sorted(reasons.items())]
        parts += [f"{unusable} not an EnrichedEvent"] if unusable else []
        return f"{total}" + (f" ({', '.join(parts)})" if parts else "")

    out: list = [f"A = {c.a}, B = {c.b}",
                 f"read: A {c.read_a}, B {c.read_b}; undecodable: A {bad(c.undecodable_a, c.unusable_a)}, "
                 f"B {bad(c.undecodable_b, c.unusable_b)}; outside the time range: A {c.outside_a}, B {c.outside_b}"]
    if not c.topics:
        out.append("nothing to compare: no decoded records in range")
    for t in c.topics:
        s = t.score_shift  # its n: the joined events whose labels agree
        out += [f"input topic {t.input_topic}: joined {t.joined}, only in A {t.only_a}, only in B {t.only_b}; "
                f"duplicates dropped: A {t.duplicates_a}, B {t.duplicates_b}",
                f"labels: agreement {_pct(t.label_agreement)} ({s['n']} of {t.joined}); top score shift where "
                f"they agree (n={s['n']}): mean |B-A| {fmt(s['mean_abs'])}, p95 {fmt(s['p95_abs'])}, "
                f"max {fmt(s['max_abs'])}, mean B-A {fmt(s['mean_signed'])}"]
        if t.confusion:
            columns = sorted({lb for row in t.confusion.values() for lb in row})
            table = Table(title=f"{e_(t.input_topic)}: labels, A (rows) x B (columns)")
            table.add_column("A \\ B")
            for lb in columns:
                table.add_column(e_(lb), justify="right")
            for la, row in t.confusion.items():
                table.add_row(e_(la), *[str(row.get(lb, 0)) for lb in columns])
            out.append(table)
        ents = Table(title=f"{e_(t.input_topic)}: entity spans (label, start, end) of B against A")
        for col in ("label", "A spans", "B spans", "matched", "precision", "recall", "F1"):
            ents.add_column(col, justify="left" if col == "label" else "right")
        for label, e in [*t.entities["per_type"].items(), ("overall", t.entities["overall"])]:
            ents.add_row(e_(label), str(e["true"]), str(e["predicted"]), str(e["tp"]), fmt(e["precision"]),
                         fmt(e["recall"]), fmt(e["f1"]))
        out.append(ents)
        if t.fields:
            fields = Table(title=f"{e_(t.input_topic)}: typed fields")
            for col in ("field", "events", "equal", "null in A", "null in B"):
                fields.add_column(col, justify="left" if col == "field" else "right")
            for name, f in t.fields.items():
                fields.add_row(e_(name), str(f["n"]), _pct(f["equal"]), _pct(f["null_a"]), _pct(f["null_b"]))
            out.append(fields)
        out.append(f"models: A {', '.join(t.models_a) or '-'}; B {', '.join(t.models_b) or '-'}")
    return out


def plot(c: Comparison, path: Path) -> Path:
    """A PNG, one row per input topic: the confusion table as a heat map (counts written in)
    and the agreement figures as bars (label agreement, entity precision/recall/F1, each typed
    field's equal share). Agg backend, as bench/chart.py; matplotlib is imported only here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(len(c.topics), 1)
    fig, axes = plt.subplots(rows, 2, figsize=(13, 4.5 * rows), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1]})
    fig.suptitle(f"streams compare: A = {c.a}, B = {c.b}")
    if not c.topics:
        for ax in axes[0]:
            ax.axis("off")
        axes[0][0].text(0.5, 0.5, "nothing to compare", ha="center")
    for (heat, bars), t in zip(axes, c.topics):
        row_labels = list(t.confusion)
        col_labels = sorted({lb for row in t.confusion.values() for lb in row})
        grid = [[t.confusion[la].get(lb, 0) for lb in col_labels] for la in row_labels]
        if grid:
            heat.imshow(grid, cmap="Blues", aspect="auto")
            top = max(max(r) for r in grid) or 1
            for i, r in enumerate(grid):
                for j, v in enumerate(r):
                    heat.text(j, i, str(v), ha="center", va="center", fontsize=9,
                              color="white" if v > top / 2 else "black")
        heat.set_xticks(range(len(col_labels)), col_labels, rotation=30, ha="right", fontsize=8)
        heat.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
        heat.set_xlabel("B's label")
        heat.set_ylabel("A's label")
        heat.set_title(f"{t.input_topic}: joined {t.joined}, only A {t.only_a}, only B {t.only_b}", fontsize=10)
        overall = t.entities["overall"]
        figures = [("label agreement", t.label_agreement), ("entity precision", overall["precision"]),
                   ("entity recall", overall["recall"]), ("entity F1", overall["f1"]),
                   *[(f"field {name} equal", f["equal"]) for name, f in t.fields.items()]]
        values = [v if v is not None else 0.0 for _, v in figures]
        bars.barh(range(len(figures)), values, color="#4c72b0")
        for i, (_, v) in enumerate(figures):
            bars.text(min((v or 0.0) + 0.01, 0.9), i, "-" if v is None else f"{v:.3f}", va="center", fontsize=8)
        bars.set_yticks(range(len(figures)), [name for name, _ in figures], fontsize=8)
        bars.set_xlim(0, 1.05)
        bars.invert_yaxis()
        bars.set_xlabel("share (B against A)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
