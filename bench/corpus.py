"""Generated support traffic for the bench: tickets and order notes nobody picked to suit the engine.

The bundled samples are 24 hand-written texts of very different lengths, where sorting by length
pays a lot. Real support traffic is many texts of similar length (a few sentences each) with a
name, a contact and an order number in most of them. `tickets(n)` generates that, deterministic
for a seed: each text is a greeting, one to three sentences of a complaint or question from one of
the support-ticket topics, and the personal data a customer writes (a name, an email or a phone,
sometimes a street address), 150-340 characters. The spans of the personal data written into
each text are kept (`Ticket.pii`), so the corpus can also score what the entity model finds."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

GIVEN = ["Maria", "James", "Aisha", "Tomasz", "Chen", "Olivia", "Rahul", "Sofia", "Lukas", "Emma",
         "Mateo", "Hannah", "Yusuf", "Grace", "Daniel", "Priya", "Noah", "Ingrid", "Kwame", "Laura",
         "Diego", "Fatima", "Oskar", "Mei", "Samuel", "Claire", "Ahmed", "Julia", "Victor", "Nora"]
SURNAMES = ["Gonzalez", "Smith", "Okafor", "Nowak", "Wei", "Brown", "Patel", "Rossi", "Müller",
            "Johnson", "Fernandez", "Schmidt", "Demir", "Walker", "Kim", "Sharma", "Taylor", "Larsen",
            "Mensah", "Martin", "Silva", "Haddad", "Berg", "Tanaka", "Adeyemi", "Dubois", "Khan",
            "Novak", "Costa", "Murphy"]
DOMAINS = ["example.com", "mail.example.org", "inbox.example.net", "example.co.uk", "post.example.de"]
STREETS = ["Maple Street", "Oak Avenue", "Church Road", "High Street", "Elm Drive", "Park Lane",
           "Mill Road", "Station Road", "Cedar Court", "Lakeview Boulevard", "Willow Way"]
CITIES = [("Denver", "CO", "80203"), ("Austin", "TX", "78701"), ("Portland", "OR", "97205"),
          ("Columbus", "OH", "43215"), ("Boston", "MA", "02116"), ("Seattle", "WA", "98101"),
          ("Atlanta", "GA", "30303"), ("Chicago", "IL", "60601"), ("Phoenix", "AZ", "85004")]
PRODUCTS = ["wireless headphones", "running shoes", "coffee grinder", "winter jacket", "desk lamp",
            "yoga mat", "blender", "backpack", "phone case", "kettle", "office chair", "rain boots",
            "bluetooth speaker", "cookware set", "smart watch", "duvet cover"]

# Per topic: what the customer says (1-3 are picked). {product}, {amount}, {days}, {order} are filled.
BODIES = {
    "billing": [
        "I was charged twice for order {order}, two payments of ${amount} on the same day.",
        "My invoice for order {order} shows ${amount} but the checkout said less.",
        "Please refund the duplicate charge on my card as soon as possible.",
        "I was billed for express shipping that I never selected.",
        "The discount code was not applied and I paid the full price of ${amount}.",
    ],
    "delivery": [
        "My parcel with the {product} for order {order} still hasn't arrived.",
        "Tracking says it has been stuck at the depot for {days} days now.",
        "The delivery date keeps moving and nobody can tell me where the package is.",
        "The courier marked order {order} as delivered but nothing came.",
        "Could you check the shipping status, I need it before the weekend.",
    ],
    "damaged or wrong item": [
        "The {product} from order {order} arrived broken, the box was crushed.",
        "I received the wrong size and the colour is not the one I ordered.",
        "The {product} stopped working after {days} days, it seems defective.",
        "Half of the set was missing and one piece is cracked.",
        "You sent me a completely different item than the one on the invoice.",
    ],
    "returns and refunds": [
        "I would like to return the {product} from order {order}, it does not fit.",
        "How do I send the item back and get my ${amount} refunded?",
        "I returned the {product} {days} days ago and still have no refund.",
        "Can I exchange it for another model instead of a refund?",
        "Please send me a return label, I changed my mind about this purchase.",
    ],
    "account access": [
        "I cannot log in to my account, the password reset email never arrives.",
        "My account is locked after too many attempts and support chat is down.",
        "The two-factor code is sent to an old phone number I no longer have.",
        "I want to change the email on my account to a new address.",
        "Every time I sign in it says my session expired.",
    ],
    "product question": [
        "Is the {product} compatible with the older model I bought last year?",
        "What material is the {product} made of, is it waterproof?",
        "Will the {product} be back in stock before the end of the month?",
        "Does the {product} come with a warranty and how long is it?",
        "Which size would you recommend for the {product}, I am between two sizes.",
    ],
}
GREETINGS = ["Hello,", "Hi there,", "Hi,", "Good morning,", "Dear support team,", "Hey,", ""]
CLOSINGS = ["Thanks.", "Thank you!", "Kind regards.", "Please help.", "Thanks in advance.", ""]


@dataclass
class Ticket:
    """One generated text, its topic and the personal data written into it (label, start, end)."""
    text: str
    topic: str
    pii: list[tuple[str, int, int]] = field(default_factory=list)


class _Writer:
    """Appends pieces of text and remembers where each piece of personal data landed."""

    def __init__(self):
        self.parts: list[str] = []
        self.length = 0
        self.pii: list[tuple[str, int, int]] = []

    def add(self, text: str, label: str | None = None) -> None:
        if label:
            self.pii.append((label, self.length, self.length + len(text)))
        self.parts.append(text)
        self.length += len(text)

    def text(self) -> str:
        return "".join(self.parts)


def _contact(w: _Writer, rng: random.Random, given: str, surname: str) -> None:
    kind = rng.random()
    if kind < 0.45:
        user = rng.choice([f"{given}.{surname}", f"{given[0]}{surname}", f"{given}{rng.randint(1, 99)}"])
        w.add(rng.choice([" You can reach me at ", " My email is ", " Reply to "]))
        w.add(f"{user.lower()}@{rng.choice(DOMAINS)}", "EMAIL")
        w.add(".")
    elif kind < 0.8:
        w.add(rng.choice([" Call me on ", " My phone number is ", " Reach me at "]))
        w.add(rng.choice(["({a}) {b}-{c}", "{a}-{b}-{c}", "+1 {a} {b} {c}"]).format(
            a=rng.randint(201, 989), b=rng.randint(200, 999), c=f"{rng.randint(0, 9999):04d}"), "PHONE")
        w.add(".")
    if rng.random() < 0.35:
        write_address(w, rng, [" Ship to ", " My address is ", " I live at "])


def write_address(w: _Writer, rng: random.Random, openings: list[str], secondary: bool = False) -> None:
    """An opening and a street address, each part labelled; `secondary`: with a flat or suite."""
    city, state, zip_code = rng.choice(CITIES)
    w.add(rng.choice(openings))
    w.add(str(rng.randint(3, 9800)), "BUILDING_NUMBER")
    w.add(" ")
    w.add(rng.choice(STREETS), "STREET_NAME")
    w.add(", ")
    if secondary:
        w.add(rng.choice([f"Apt {rng.randint(1, 40)}{rng.choice('ABCD')}", f"Suite {rng.randint(100, 950)}",
                          f"Unit {rng.randint(1, 99)}", f"Floor {rng.randint(2, 30)}"]), "SECONDARY_ADDRESS")
        w.add(", ")
    w.add(city, "CITY")
    w.add(", ")
    w.add(state, "STATE")
    w.add(" ")
    w.add(zip_code, "ZIP_CODE")
    w.add(".")


def ticket(rng: random.Random, topic: str | None = None) -> Ticket:
    """One ticket or order note: greeting, name, 1-3 sentences of the topic, contact, closing."""
    topic = topic or rng.choice(list(BODIES))
    given, surname = rng.choice(GIVEN), rng.choice(SURNAMES)
    w = _Writer()
    greeting = rng.choice(GREETINGS)
    w.add(greeting + (" " if greeting else ""))
    if rng.random() < 0.7:
        w.add(rng.choice(["my name is ", "this is ", "I am "]) if greeting else "My name is ")
        w.add(given, "GIVEN_NAME")
        w.add(" ")
        w.add(surname, "SURNAME")
        w.add(". ")
    fills = {"product": rng.choice(PRODUCTS), "amount": f"{rng.randint(9, 480)}.{rng.randint(0, 99):02d}",
             "days": rng.randint(2, 21), "order": f"#{rng.randint(100000, 999999)}"}
    body = rng.sample(BODIES[topic], rng.randint(1, 3))
    w.add(" ".join(s.format(**fills) for s in body))
    _contact(w, rng, given, surname)
    closing = rng.choice(CLOSINGS)
    w.add((" " + closing) if closing else "")
    return Ticket(w.text().strip(), topic, [(label, s, e) for label, s, e in w.pii])


def tickets(n: int, seed: int = 2026, min_chars: int = 150, max_chars: int = 340) -> list[Ticket]:
    """`n` generated texts of `min_chars`-`max_chars` characters, deterministic for `seed`."""
    rng = random.Random(seed)
    out: list[Ticket] = []
    while len(out) < n:
        t = ticket(rng)
        if min_chars <= len(t.text) <= max_chars:
            lead = len(t.text) - len(t.text.lstrip())
            out.append(t if not lead else Ticket(t.text, t.topic, [(l, s - lead, e - lead) for l, s, e in t.pii]))
    return out


def texts(n: int, seed: int = 2026) -> list[str]:
    return [t.text for t in tickets(n, seed)]
