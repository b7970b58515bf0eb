"""Generated texts with every kind of personal data the entity model claims, labelled, for
measuring redaction (`streams redaction-recall`, docs/redaction.md).

bench/corpus.py writes names, emails, phones and street addresses into support tickets and keeps
their spans; this adds the other types Rampart names: URLs, tax ids, bank accounts and routing
numbers, government ids (SSNs), passports, driver's licenses and secondary addresses
(apartment, suite). Each text is a ticket (greeting, maybe a name, a complaint, a contact, as
bench/corpus.py writes them) plus two sentences carrying the other types, chosen in turn so every
type appears about equally often. Deterministic for a seed; the values are made up (emails on
example domains, SSNs in the never-issued 9xx area)."""

from __future__ import annotations

import random

from .corpus import (BODIES, CLOSINGS, GIVEN, GREETINGS, PRODUCTS, SURNAMES, Ticket, _contact,
                     _Writer, write_address)

TYPES = ["GIVEN_NAME", "SURNAME", "EMAIL", "PHONE", "URL", "TAX_ID", "BANK_ACCOUNT", "ROUTING_NUMBER",
         "GOVERNMENT_ID", "PASSPORT", "DRIVERS_LICENSE", "BUILDING_NUMBER", "STREET_NAME",
         "SECONDARY_ADDRESS", "CITY", "STATE", "ZIP_CODE"]
SITES = ["shop.example.com", "www.example.org", "example.net", "my.example.co.uk"]


def _digits(rng: random.Random, n: int) -> str:
    return "".join(str(rng.randint(0, 9)) for _ in range(n))


def _routing(rng: random.Random) -> str:
    """A nine-digit ABA routing number with a valid check digit."""
    d = [rng.randint(0, 9) for _ in range(8)]
    check = (-(3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + (d[2] + d[5]))) % 10
    return "".join(map(str, d)) + str(check)


def _said(w: _Writer, rng: random.Random, lead: list[str], value: str, label: str) -> None:
    w.add(" " + rng.choice(lead))
    w.add(value, label)
    w.add(".")


def _url(w, rng):
    path = rng.choice(["/u/", "/profile/", "/orders/", "/account?id="]) + _digits(rng, 6)
    _said(w, rng, ["My profile is at ", "The page is ", "See "], f"https://{rng.choice(SITES)}{path}", "URL")


def _tax_id(w, rng):
    value = rng.choice([f"{_digits(rng, 2)}-{_digits(rng, 7)}", f"9{_digits(rng, 2)}-7{_digits(rng, 1)}-{_digits(rng, 4)}"])
    _said(w, rng, ["Our tax ID is ", "Put the EIN ", "The invoice needs my tax number "], value, "TAX_ID")


def _bank(w, rng):
    w.add(" " + rng.choice(["Please refund to account ", "Send the money to bank account ", "My account number is "]))
    w.add(_digits(rng, rng.randint(8, 12)), "BANK_ACCOUNT")
    w.add(rng.choice([", routing number ", " with routing ", ", ABA "]))
    w.add(_routing(rng), "ROUTING_NUMBER")
    w.add(".")


def _ssn(w, rng):
    value = f"9{_digits(rng, 2)}-{_digits(rng, 2)}-{_digits(rng, 4)}"
    _said(w, rng, ["My SSN is ", "The social security number on file is ", "Verify me with SSN "], value,
          "GOVERNMENT_ID")


def _passport(w, rng):
    value = rng.choice([_digits(rng, 9), rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") + _digits(rng, 8)])
    _said(w, rng, ["My passport number is ", "Passport no. ", "The customs form has passport "], value, "PASSPORT")


def _license(w, rng):
    letter = rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ")
    value = rng.choice([f"{letter}{_digits(rng, 7)}", f"{letter}{_digits(rng, 3)}-{_digits(rng, 4)}-{_digits(rng, 4)}"])
    _said(w, rng, ["My driver's license number is ", "Driver license ", "ID for pickup: license "], value,
          "DRIVERS_LICENSE")


def _address(w, rng):
    write_address(w, rng, [" Deliver to ", " My new address is ", " Send it to "], secondary=True)


EXTRAS = [_url, _tax_id, _bank, _ssn, _passport, _license, _address]


def pii_texts(n: int = 240, seed: int = 28) -> list[Ticket]:
    """`n` labelled texts: every one names a person (so names are measured in every text), two
    of the extra types in turn, and a contact as bench/corpus.py writes it."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        topic = rng.choice(list(BODIES))
        w = _Writer()
        greeting = rng.choice([g for g in GREETINGS if g])
        w.add(greeting + " " + rng.choice(["my name is ", "this is ", "I am "]))
        given, surname = rng.choice(GIVEN), rng.choice(SURNAMES)
        w.add(given, "GIVEN_NAME")
        w.add(" ")
        w.add(surname, "SURNAME")
        w.add(". ")
        fills = {"product": rng.choice(PRODUCTS), "amount": f"{rng.randint(9, 480)}.{rng.randint(0, 99):02d}",
                 "days": rng.randint(2, 21), "order": f"#{rng.randint(100000, 999999)}"}
        w.add(rng.choice(BODIES[topic]).format(**fills))
        for extra in (EXTRAS[(2 * i) % len(EXTRAS)], EXTRAS[(2 * i + 1) % len(EXTRAS)]):
            extra(w, rng)
        _contact(w, rng, given, surname)
        closing = rng.choice(CLOSINGS)
        w.add((" " + closing) if closing else "")
        out.append(Ticket(w.text(), topic, list(w.pii)))
    return out
