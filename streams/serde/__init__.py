"""Bytes in, bytes out: JSON or Confluent-framed Avro input, Confluent-framed Avro output.
Knows nothing of models or Faust."""

from .input import DecodeError, InputEvent, decode_input
from .registry import SchemaCatalog

__all__ = ["DecodeError", "InputEvent", "decode_input", "SchemaCatalog"]
