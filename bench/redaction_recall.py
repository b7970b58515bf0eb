"""How much personal data redaction leaves behind (`streams redaction-recall`): the real entity
model on the labelled texts of bench/pii_corpus.py, the redaction planned from what it found
(streams/redact.py, every type redacted), and per type the share of the labelled characters no
redaction covers, i.e. still readable in the redacted text. Nothing else decides what is
redacted, so this is the share a consumer of `redacted_text` (or of the copy topic) can read."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from streams.redact import RedactionPolicy, plan
from streams.settings import Settings

from .pii_corpus import TYPES, pii_texts


@dataclass
class TypeRecall:
    label: str
    values: int = 0
    chars: int = 0
    chars_left: int = 0  # labelled characters no redaction covers
    values_whole: int = 0  # values every character of which is left

    @property
    def left_share(self) -> float:
        return self.chars_left / self.chars if self.chars else 0.0


def measure(texts, entities, policy: RedactionPolicy | None = None) -> dict:
    """Per type what is left of the labelled values (`texts`: bench.corpus.Ticket) given the
    entities found in each text; and the share of unlabelled characters redacted anyway."""
    policy = policy or RedactionPolicy()
    rows = {t: TypeRecall(t) for t in TYPES}
    other_chars = other_redacted = 0
    for ticket, found in zip(texts, entities):
        covered = bytearray(len(ticket.text))
        for r in plan(ticket.text, found, policy):
            covered[r.start:r.end] = b"\x01" * (r.end - r.start)
        labelled = bytearray(len(ticket.text))
        for label, start, end in ticket.pii:
            row = rows.setdefault(label, TypeRecall(label))
            left = (end - start) - sum(covered[start:end])
            row.values += 1
            row.chars += end - start
            row.chars_left += left
            row.values_whole += left == end - start
            labelled[start:end] = b"\x01" * (end - start)
        other_chars += len(ticket.text) - sum(labelled)
        other_redacted += sum(c and not lab for c, lab in zip(covered, labelled))
    total = TypeRecall("all", sum(r.values for r in rows.values()), sum(r.chars for r in rows.values()),
                       sum(r.chars_left for r in rows.values()), sum(r.values_whole for r in rows.values()))
    return {"types": [asdict(r) | {"left_share": r.left_share} for r in rows.values()],
            "all": asdict(total) | {"left_share": total.left_share},
            "other_chars": other_chars, "other_chars_redacted": other_redacted,
            "texts": len(texts)}


def run(n: int = 240, seed: int = 28, settings: Settings | None = None) -> dict:
    """The configured entity model (STREAMS_NER_MODEL, default Rampart) on `n` generated texts."""
    from streams.engine import EncoderEngine

    settings = settings or Settings()
    texts = pii_texts(n, seed)
    engine = EncoderEngine.load(settings.ner_model, settings.classifier_model, cache_dir=settings.model_cache,
                                device=settings.device, max_batch=settings.model_batch,
                                max_tokens=settings.max_tokens_per_pass, precision=settings.precision,
                                quantize=settings.quantize)
    try:
        started = time.perf_counter()
        entities = engine.extractor.extract([t.text for t in texts])  # the NER alone: no labels needed
        seconds = time.perf_counter() - started
    finally:
        engine.close()
    report = measure(texts, entities)
    ner = next(m for m in engine.models if m.task == "entities")
    return report | {"model": f"{ner.name} ({ner.version})", "device": str(engine.device),
                     "seed": seed, "ner_seconds": round(seconds, 1)}
