"""Redaction: a text and the entity spans found in it -> the text with personal data replaced.

Pure functions over Python `str` offsets (code points, as the entity model writes them), so the
same plan applies to any text the spans came from. Spans are never trusted: out-of-range,
empty, reversed or non-integer spans are dropped or clipped, overlapping spans (windows of a long
text that overlap, two labels for one value) and touching spans of one type are merged, and a
span that cuts a character sequence (a combining accent, an emoji with modifiers or joiners) is
widened to whole characters, so no half of a value survives beside its token.

Operators, per entity type (`RedactionPolicy`):
- `mask`: the value's characters replaced by a mask character (length kept, so offsets after
  it stay valid), or by a fixed run of it (`mask_length`: the length is not leaked);
- `replace`: `<EMAIL>`;
- `pseudonym`: `<EMAIL:k1:3f9a...>`, HMAC-SHA256 of the normalised value under a secret key:
  the same value gives the same token in every event and worker holding the key, and nobody
  without it can reverse a token or test a guess; `k1` is the key's id, for rotation;
- `drop`: the span removed;
- `keep`: left as it is."""

from __future__ import annotations

import hashlib
import hmac
import numbers
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Operator = Literal["mask", "replace", "pseudonym", "drop", "keep"]

# When spans of different operators merge, the merged span gets the most protective one.
_PROTECTION = {"keep": 0, "pseudonym": 1, "mask": 2, "replace": 3, "drop": 4}
# Types whose values are written with free punctuation: "(555) 123-4567" and "555.123.4567" are
# one number, so they normalise to the same pseudonym.
_NUMBERS = frozenset({"PHONE", "TAX_ID", "BANK_ACCOUNT", "ROUTING_NUMBER", "GOVERNMENT_ID", "PASSPORT",
                      "DRIVERS_LICENSE", "ZIP_CODE", "BUILDING_NUMBER"})
_NUMBER_PUNCTUATION = re.compile(r"[\s\-./()]+")
_SPACES = re.compile(r"\s+")
_LABEL_CHARS = re.compile(r"[^A-Z0-9_]")
KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,16}")
MIN_KEY_BYTES = 16


class RedactionPolicy(BaseModel):
    """A route's redaction (`TopicRoute.redact`). Types not in `types` get `default`: a type the
    model starts writing is redacted rather than published (fail closed). Unknown keys are
    refused: a misspelt `copy_topic` must stop the worker, not silently publish no copy."""

    model_config = ConfigDict(extra="forbid")

    types: dict[str, Operator] = Field(default_factory=dict)
    default: Operator = "replace"
    mask_char: str = Field("*", min_length=1, max_length=1)
    mask_length: int | None = Field(None, ge=1, le=64, description="fixed mask length; None: the value's")
    pseudonym_chars: int = Field(16, ge=8, le=64, description="hex characters of the HMAC in a token")
    copy_topic: str | None = None  # the redacted copy of the input event goes here; None: no copy

    @field_validator("types")
    @classmethod
    def _upper(cls, types: dict[str, Operator]) -> dict[str, Operator]:
        return {k.upper(): v for k, v in types.items()}

    def operator(self, label: str) -> Operator:
        return self.types.get(label, self.default)

    @property
    def uses_pseudonym(self) -> bool:
        return self.default == "pseudonym" or "pseudonym" in self.types.values()


@dataclass(frozen=True, slots=True)
class Redaction:
    """One merged span of the text and what is done to it."""

    start: int
    end: int
    label: str
    operator: Operator


def _offset(value: Any) -> int | None:
    """An offset as an int (numpy's integers too), or None for anything that is not one:
    bools, floats, strings."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else None


def _span_parts(span: Any) -> tuple[Any, Any, Any]:
    """(label, start, end) of an entity object (`.label`, `.start`, `.end`) or dict."""
    if isinstance(span, dict):
        return span.get("label"), span.get("start"), span.get("end")
    return getattr(span, "label", None), getattr(span, "start", None), getattr(span, "end", None)


def clean_label(label: Any) -> str:
    """The entity type as it appears in a token: upper-case letters, digits and underscores only,
    so a hostile label cannot write markup or fake a token into the text."""
    cleaned = _LABEL_CHARS.sub("", str(label).upper())[:32] if isinstance(label, str) else ""
    return cleaned or "PII"


def _is_extension(ch: str) -> bool:
    """A code point that belongs to the character before it: a combining mark, a variation
    selector, an emoji skin-tone modifier, a zero-width joiner."""
    return unicodedata.category(ch) in ("Mn", "Mc", "Me") or ch == "\u200d" or "\U0001f3fb" <= ch <= "\U0001f3ff"


def _widen(text: str, start: int, end: int) -> tuple[int, int]:
    """The span grown to whole user-perceived characters at both edges."""
    while 0 < start < len(text) and (_is_extension(text[start]) or text[start - 1] == "\u200d"):
        start -= 1
    while end < len(text) and (_is_extension(text[end]) or text[end - 1] == "\u200d"):
        end += 1
    return start, end


# Types whose value is one whitespace-free token: a span of one grows to the whole address (the
# entity model often tags only an email's local part, or a URL's host: docs/redaction.md).
_WHOLE_TOKEN = frozenset({"EMAIL", "URL"})
_TOKEN_LIMIT = 256  # an address is never longer (RFC 5321: 254): a hostile run is not scanned
_TOKEN_EDGE = "\"'()<>[]{},;:!?."  # punctuation around an address, not part of it


def _whole_token(text: str, start: int, end: int) -> tuple[int, int]:
    """The span grown to the whitespace-free token it lies in (at most `_TOKEN_LIMIT` characters
    each way), without the punctuation around it; an email only when that token has an "@"."""
    lo = start
    while lo > 0 and start - lo < _TOKEN_LIMIT and not text[lo - 1].isspace():
        lo -= 1
    hi = end
    while hi < len(text) and hi - end < _TOKEN_LIMIT and not text[hi].isspace():
        hi += 1
    while lo < start and text[lo] in _TOKEN_EDGE:
        lo += 1
    while hi > end and text[hi - 1] in _TOKEN_EDGE:
        hi -= 1
    return lo, hi


def plan(text: str, spans: Iterable[Any], policy: RedactionPolicy) -> list[Redaction]:
    """The redactions for `text`, sorted, disjoint. Spans to keep, and invalid spans, are left
    out; overlapping spans, and touching spans of one type, become one redaction with the label
    of its longest part and the most protective operator of its parts."""
    n = len(text)
    parts: list[tuple[int, int, str, Operator]] = []
    for span in spans:
        label, start, end = _span_parts(span)
        start, end = _offset(start), _offset(end)
        if start is None or end is None:
            continue
        start, end = max(start, 0), min(end, n)
        if start >= end:
            continue
        label = clean_label(label)
        op = policy.operator(label)
        if op == "keep":
            continue
        if label in _WHOLE_TOKEN:
            lo, hi = _whole_token(text, start, end)
            if label == "URL" or "@" in text[lo:hi]:
                start, end = lo, hi
        start, end = _widen(text, start, end)
        parts.append((start, end, label, op))
    parts.sort(key=lambda p: (p[0], -p[1]))
    merged: list[Redaction] = []
    group: list[tuple[int, int, str, Operator]] = []
    group_end = 0
    for part in parts:
        if group and (part[0] < group_end or (part[0] == group_end and part[2] == group[-1][2])):
            group.append(part)
            group_end = max(group_end, part[1])
            continue
        if group:
            merged.append(_merge(group, group_end))
        group, group_end = [part], part[1]
    if group:
        merged.append(_merge(group, group_end))
    return merged


def _merge(group: list[tuple[int, int, str, Operator]], end: int) -> Redaction:
    longest = max(group, key=lambda p: p[1] - p[0])  # max keeps the first of equals
    op = max((p[3] for p in group), key=_PROTECTION.__getitem__)
    return Redaction(group[0][0], end, longest[2], op)


def normalise(label: str, value: str) -> str:
    """The form of a value that is hashed: compatibility-normalised, case-folded, whitespace
    collapsed; numbers without their punctuation. The same email or phone written two ways
    gives one pseudonym."""
    value = _SPACES.sub(" ", unicodedata.normalize("NFKC", value).casefold()).strip()
    if label in _NUMBERS:
        value = _NUMBER_PUNCTUATION.sub("", value)
    return value


class Pseudonymizer:
    """HMAC-SHA256 under one secret key. The key stays in this object: its repr names only the
    key id, so no log line, trace or error that shows the object shows the key."""

    __slots__ = ("_key", "key_id")

    def __init__(self, key: bytes, key_id: str):
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the redaction key must be at least {MIN_KEY_BYTES} bytes")
        if not KEY_ID.fullmatch(key_id):
            raise ValueError("the redaction key id must be 1-16 letters, digits, '-' or '_'")
        self._key = key
        self.key_id = key_id

    def __repr__(self) -> str:
        return f"Pseudonymizer(key_id={self.key_id!r})"

    def token(self, label: str, value: str, chars: int = 16) -> str:
        digest = hmac.new(self._key, normalise(label, value).encode("utf-8", "surrogatepass"),
                          hashlib.sha256).hexdigest()
        return f"<{label}:{self.key_id}:{digest[:chars]}>"


class Redactor:
    """One route's policy, bound to the pseudonym key when the policy needs one."""

    def __init__(self, policy: RedactionPolicy, pseudonymizer: Pseudonymizer | None = None):
        if policy.uses_pseudonym and pseudonymizer is None:
            raise ValueError("this redaction policy uses pseudonym: set STREAMS_REDACTION_KEY")
        self.policy = policy
        self.pseudonymizer = pseudonymizer

    def __repr__(self) -> str:
        return f"Redactor({self.policy!r}, {self.pseudonymizer!r})"

    def replacement(self, text: str, r: Redaction) -> str:
        p = self.policy
        if r.operator == "drop":
            return ""
        if r.operator == "replace":
            return f"<{r.label}>"
        if r.operator == "mask":
            return p.mask_char * (p.mask_length or (r.end - r.start))
        return self.pseudonymizer.token(r.label, text[r.start:r.end], p.pseudonym_chars)

    def redact(self, text: str, spans: Iterable[Any]) -> str:
        """`text` with every span the policy redacts replaced."""
        out, at = [], 0
        for r in plan(text, spans, self.policy):
            out.append(text[at:r.start])
            out.append(self.replacement(text, r))
            at = r.end
        out.append(text[at:])
        return "".join(out)
