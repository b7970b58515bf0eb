"""Bytes in, bytes out: JSON or Confluent-framed Avro input, Confluent-framed Avro output.
Knows nothing of models or Faust.

Imported lazily (PEP 562): `streams.serde.fields` (the LLM engine's schemas) needs neither
confluent-kafka nor fastavro, so the engine also runs where only torch and transformers are
installed (bench/gpu.sh)."""

from __future__ import annotations

from importlib import import_module

__all__ = ["DecodeError", "InputEvent", "decode_input", "SchemaCatalog"]
_HOME = {"DecodeError": ".input", "InputEvent": ".input", "decode_input": ".input",
         "SchemaCatalog": ".registry"}


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(import_module(_HOME[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
