"""The bundled sample events (`samples.jsonl`, one JSON object per line, each with its `topic`):
what `streams produce` and `streams demo` send, and the texts the bench and the tests run on.
The one reader of the file."""

from __future__ import annotations

import json
from importlib import resources

FILE = "samples.jsonl"


def events(topic: str | None = None) -> list[dict]:
    """The sample events in file order; only `topic`'s when given."""
    text = resources.files(__name__).joinpath(FILE).read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r for r in rows if topic is None or r["topic"] == topic]


def texts(n: int, topic: str | None = None) -> list[str]:
    """`n` sample texts (only `topic`'s when given), the samples repeated in order."""
    rows = [r["text"] for r in events(topic)]
    return [rows[i % len(rows)] for i in range(n)]
