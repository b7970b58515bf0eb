"""Grounded values: a typed field marked grounded must repeat what the input text says, so a value
the model invented (an order id, an amount the ticket never names) becomes null instead of
reaching a service that acts on it. Pure functions, no model.

Strings: the value occurs in the text, compared case-insensitively (Unicode NFKC + casefold)
with every run of whitespace read as one space, and the match starts and ends on a word
boundary wherever the value starts or ends with a letter or digit ("5582" is not in "55821",
"maria" is in "Maria's").

Numbers: the same number is written in the text in a common format: currency signs and other
non-digits around it are ignored ("$84.20", "€49,99", "#1234567890"); trailing zeros do not
matter (84.2 = "84.20"); a thousands separator is "," or "." in groups of three with the other
as the decimal mark ("1,299.00", "1.299,00"); a lone "," or "." before exactly three digits
reads both ways ("1,299" is 1299 or 1.299); before any other count of digits it is the decimal
mark ("84,20" is 84.2). Digits joined to other digits by "-" (phone numbers, dates:
"312-555-0147") are not numbers of their own. A negative value needs a minus sign right before
the digits or their currency sign ("-5", "-$5"), not after a letter or digit ("INV-20931" is
20931)."""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation

# The JSON Schema keyword (an extension) that marks a grounded property in a field schema.
GROUNDED = "x-grounded"
_SPACE = re.compile(r"\s+")
# An optional minus (not after a letter or digit: "INV-20931" is not negative), an optional
# currency sign, then digits with "," and "." inside.
_NUMBER = re.compile(r"(?:(?<!\w)([-\u2212])[^\w\s]?)?(\d(?:[\d.,]*\d)?)")
_GROUPED = re.compile(r"\d{1,3}(?:([.,])\d{3})(?:\1\d{3})*")  # 1,299 / 1.299.000
_SEPARATORS = re.compile(r"[.,]")


def _fold(s: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", s).casefold()).strip()


def grounded_string(value: str, text: str) -> bool:
    """Whether `value` occurs in `text` (case and whitespace aside, on word boundaries)."""
    needle, hay = _fold(value), _fold(text)
    if not needle:
        return False
    start = hay.find(needle)
    while start >= 0:
        end = start + len(needle)
        before = start == 0 or not (needle[0].isalnum() and hay[start - 1].isalnum())
        after = end == len(hay) or not (needle[-1].isalnum() and hay[end].isalnum())
        if before and after:
            return True
        start = hay.find(needle, start + 1)
    return False


def readings(token: str) -> set[Decimal]:
    """The numbers a run of digits, "," and "." may mean (see the module docstring)."""
    if not _SEPARATORS.search(token):
        return {Decimal(token)}
    out: set[Decimal] = set()
    if _GROUPED.fullmatch(token):  # every separator a thousands separator
        out.add(Decimal(_SEPARATORS.sub("", token)))
    last = max(token.rfind("."), token.rfind(","))
    whole, decimals = token[:last], token[last + 1:]
    if token[last] not in whole:  # the last separator, once, as the decimal mark
        if not _SEPARATORS.search(whole) or _GROUPED.fullmatch(whole):
            out.add(Decimal(f"{_SEPARATORS.sub('', whole)}.{decimals}"))
    return out


def numbers_in(text: str) -> set[Decimal]:
    """Every number written in `text`, each in all the readings its format allows."""
    found: set[Decimal] = set()
    for m in _NUMBER.finditer(text):
        start, end = m.span(2)
        if (text[start - 2:start - 1].isdigit() and text[start - 1] == "-") or \
                (text[end:end + 1] == "-" and text[end + 1:end + 2].isdigit()):
            continue  # one part of 312-555-0147 or 2024-05-01
        found |= {-n if m.group(1) else n for n in readings(m.group(2))}
    return found


def grounded_number(value: int | float, text: str) -> bool:
    """Whether `value` is a number written in `text`, in any of the formats above."""
    try:
        wanted = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, ValueError):
        return False
    return wanted.is_finite() and wanted in numbers_in(text)


def grounded(value: object, text: str) -> bool:
    """Whether a string or number `value` is grounded in `text`; other values are not."""
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return grounded_string(value, text)
    if isinstance(value, (int, float)):
        return grounded_number(value, text)
    return False
