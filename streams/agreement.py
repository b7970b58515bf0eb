"""How far two enriched records of one event agree: the live one and a candidate's.

One pair at a time, for the live shadow metrics (`pipeline`, after a candidate ran) and, summed
over a topic, in `streams compare` (streams/compare.py): the same rules in both places. An
entity span is (label, "start:end"): the span's position, never the event's text."""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple


class Agreement(NamedTuple):
    label_equal: bool
    spans_a: int  # A's entity spans (A: the reference, the live record)
    spans_b: int
    spans_matched: int  # spans equal in label, start and end, counted as multisets
    fields: int  # typed fields in either record (a record without `fields` has each null)
    fields_equal: int  # of those, equal values (null equals null)


def spans(record: dict) -> list[tuple[str, str]]:
    """(label, "start:end") of each entity of an enriched record."""
    return [(e["label"], f"{e['start']}:{e['end']}") for e in record.get("entities") or ()]


def agreement(a: dict, b: dict) -> Agreement:
    """A and B, two enriched records (dicts as EnrichedEvent) of the same event."""
    sa, sb = Counter(spans(a)), Counter(spans(b))
    fa, fb = a.get("fields"), b.get("fields")
    names = set(fa or ()) | set(fb or ()) if fa is not None or fb is not None else set()
    equal = sum((fa or {}).get(n) == (fb or {}).get(n) for n in names)
    return Agreement(a["classification"]["label"] == b["classification"]["label"],
                     sum(sa.values()), sum(sb.values()), sum((sa & sb).values()), len(names), equal)
