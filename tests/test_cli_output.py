"""What `streams tail` and `make run` print when piped: one line per event, never wrapped,
data never read as rich markup; `--json` one object per line."""

from __future__ import annotations

import json
import subprocess
import sys

RECORD = {"event_id": "tkt-[bold]1\nsecond line", "classification": {"label": "billing", "score": 0.93},
          "entities": [{"label": "CITY", "text": "San\nDiego"}] * 8,
          "redacted_text": "I live in <CITY>,\n[red]really[/red]",
          "fields": {"urgency": "high", "order_id": None, "summary": "a long summary " * 12},
          "field_confidence": {"urgency": 0.876, "order_id": 0.5}}

SCRIPT = f"""
import json, sys
from streams.cli import _show
record = json.loads({json.dumps(json.dumps(RECORD))})
_show("support.tickets.enriched", record, as_json=sys.argv[1] == "json")
_show("support.tickets.dlq", {{"event_id": "tkt-2", "dead_letter_reason": "llm_truncated"}}, sys.argv[1] == "json")
"""


def run(mode: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_piped_text_output_is_one_unwrapped_line_per_event():
    lines = run("text")
    assert len(lines) == 2, lines  # not wrapped at 80 columns, newlines in data escaped
    assert len(lines[0]) > 300
    assert lines[0].startswith("tkt-[bold]1\\nsecond line support.tickets.enriched billing (0.93)")
    assert "CITY='San\\nDiego'" in lines[0]
    # The redacted text beside the entities (a redacting route), markup and newlines shown as data.
    assert "  redacted: 'I live in <CITY>,\\n[red]really[/red]'  fields:" in lines[0]
    # Each typed field with the LLM's confidence in it; a field without one prints bare.
    assert "urgency='high' (0.88), order_id=None (0.50), summary='a long summary" in lines[0]
    assert lines[1] == "tkt-2 support.tickets.dlq dead-lettered: llm_truncated"


def test_json_output_is_one_object_per_line():
    first, second = (json.loads(line) for line in run("json"))
    assert first == {"topic": "support.tickets.enriched", **RECORD}
    assert second["dead_letter_reason"] == "llm_truncated"
