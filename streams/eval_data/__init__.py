"""The hand-labelled set `streams eval` measures the engines on (labelled.jsonl)."""
