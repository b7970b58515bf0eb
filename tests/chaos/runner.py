"""Chaos suite against the embedded broker: kills, a frozen broker, poison, SIGTERM.

`make chaos` runs the full sizes (`python -m tests.chaos`); `make test` runs a shorter version
(tests/chaos/test_chaos.py). Prints a table and exits non-zero on any loss."""

from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from streams.broker import EmbeddedBroker, free_port
from tests.fixtures.kafka_io import Scenario, WorkerProcess, collect, json_events, produce
from tests.fixtures.tiny_models import build_tiny_models


@dataclass
class Outcome:
    name: str
    sent: int
    enriched: int
    dead: int
    lost: int
    duplicates: int
    duplicate_bound: int | None
    seconds: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.lost == 0 and (self.duplicate_bound is None or self.duplicates <= self.duplicate_bound)


def _scenario(ctx, **env) -> Scenario:
    return Scenario(ctx["bootstrap"], ctx["models"], ctx["cache"], ctx["logs"],
                    extra_env={k: str(v) for k, v in env.items()})


def kill_three_times(ctx, n: int, rng: random.Random) -> Outcome:
    sc = _scenario(ctx)
    settings = sc.settings
    produce(settings, sc.input, json_events(n, prefix="k"))
    started = time.monotonic()
    for kill in range(3):
        worker = WorkerProcess(sc, f"kill{kill}").start()
        target = int(n * rng.uniform(0.15, 0.3) * (kill + 1))
        got = collect(settings, sc, until=lambda c: len(c.enriched_ids) >= target, timeout=180)
        worker.kill()
    final = WorkerProcess(sc, "final").start()
    got = collect(settings, sc, until=lambda c: len(c.enriched_ids) >= n, timeout=300)
    final.stop()
    ids = got.enriched_ids
    bound = 3 * (settings.max_in_flight + settings.max_batch) * settings.topic_partitions
    return Outcome("SIGKILL x3", n, len(ids), len(got.dead), len({f"k-{i}" for i in range(n)} - ids),
                   len(got.enriched) - len(ids), bound, time.monotonic() - started,
                   f"bound: 3 kills x (in-flight {settings.max_in_flight} + batch {settings.max_batch}) x {settings.topic_partitions} partitions")


def freeze_broker(ctx, n: int, broker: EmbeddedBroker, freeze_s: float) -> Outcome:
    sc = _scenario(ctx)
    settings = sc.settings
    produce(settings, sc.input, json_events(n, prefix="f"))
    started = time.monotonic()
    worker = WorkerProcess(sc).start()
    collect(settings, sc, until=lambda c: len(c.enriched_ids) >= n // 5, timeout=180)
    broker.freeze()
    time.sleep(freeze_s)
    broker.thaw()
    got = collect(settings, sc, until=lambda c: len(c.enriched_ids) >= n, timeout=300)
    alive = worker.proc.poll() is None
    worker.stop()
    ids = got.enriched_ids
    return Outcome(f"broker frozen {freeze_s:.0f}s", n, len(ids), len(got.dead),
                   len({f"f-{i}" for i in range(n)} - ids), len(got.enriched) - len(ids), None,
                   time.monotonic() - started, "worker survived" if alive else "WORKER DIED")


def poison_tenth(ctx, n: int, rng: random.Random) -> Outcome:
    sc = _scenario(ctx)
    settings = sc.settings
    kinds = [b"{not json", b"\xff\xfe\x00", b"", json.dumps({"event_id": "x"}).encode(),
             json.dumps({"text": "no id"}).encode(), b"\x00\x00\x00\x7f\x7fbroken"]
    records, poison_keys = [], set()
    for i in range(n):
        if rng.random() < 0.1:
            key = f"p-{i}".encode()
            records.append((key, kinds[i % len(kinds)]))
            poison_keys.add(key)
        else:
            records.append((f"g-{i}".encode(), json.dumps({"event_id": f"g-{i}", "text": "my parcel is late"}).encode()))
    good = {k.decode() for k, _ in records if k not in poison_keys}
    produce(settings, sc.input, records)
    started = time.monotonic()
    worker = WorkerProcess(sc).start()
    got = collect(settings, sc, until=lambda c: good <= c.enriched_ids and
                  poison_keys <= {k for k, _, _ in c.dead}, timeout=300)
    worker.stop()
    dead_keys = {k for k, _, h in got.dead if h.get("__streams.errors.reason")}
    lost = len(good - got.enriched_ids) + len(poison_keys - dead_keys)
    return Outcome("10% poison", n, len(got.enriched_ids), len(dead_keys), lost,
                   len(got.enriched) - len(got.enriched_ids), None, time.monotonic() - started,
                   f"{len(poison_keys)} poison, each with a reason header")


def sigterm_mid_batch(ctx, n: int, grace_s: float) -> Outcome:
    """Real models, so a batch of 64 takes seconds on a CPU and SIGTERM lands inside one."""
    sc = _scenario(ctx, STREAMS_SHUTDOWN_GRACE_S=grace_s, STREAMS_NER_MODEL="rampart",
                   STREAMS_CLASSIFIER_MODEL="all-minilm-l6-v2", STREAMS_MAX_BATCH=64)
    settings = sc.settings
    produce(settings, sc.input, json_events(n, prefix="t"))
    started = time.monotonic()
    worker = WorkerProcess(sc, "term").start()
    collect(settings, sc, until=lambda c: len(c.enriched_ids) >= 64, timeout=180)
    time.sleep(random.uniform(0.2, 1.0))
    t0 = time.monotonic()
    code = worker.stop(timeout=grace_s + 30)
    took = time.monotonic() - t0
    second = WorkerProcess(sc, "after-term").start()
    got = collect(settings, sc, until=lambda c: len(c.enriched_ids) >= n, timeout=300)
    second.stop()
    ids = got.enriched_ids
    lost = len({f"t-{i}" for i in range(n)} - ids)
    in_time = took <= grace_s and code == 0
    return Outcome("SIGTERM mid-batch", n, len(ids), len(got.dead), lost + (0 if in_time else 1),
                   len(got.enriched) - len(ids), 0, time.monotonic() - started,
                   f"exit {code} after {took:.1f}s (grace {grace_s:.0f}s)")


def run(events: int = 20_000, poison_events: int = 5_000, freeze_s: float = 20.0,
        seed: int = 7, console: Console | None = None) -> list[Outcome]:
    console = console or Console(width=180)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        root = Path(tmp)
        with EmbeddedBroker(free_port(), log_path=root / "tansu.log") as broker:
            ctx = {"bootstrap": broker.bootstrap, "models": build_tiny_models(root / "models"),
                   "cache": root / "cache", "logs": root}
            outcomes = [kill_three_times(ctx, events, rng),
                        freeze_broker(ctx, max(1000, events // 4), broker, freeze_s),
                        poison_tenth(ctx, poison_events, rng),
                        sigterm_mid_batch(ctx, 400, grace_s=20.0)]
    table = Table(title="chaos suite (embedded tansu broker, tiny models)")
    for col in ("scenario", "sent", "enriched", "DLQ", "lost", "duplicates", "bound", "s", "result", "note"):
        table.add_column(col)
    for o in outcomes:
        table.add_row(o.name, str(o.sent), str(o.enriched), str(o.dead), str(o.lost), str(o.duplicates),
                      "-" if o.duplicate_bound is None else str(o.duplicate_bound), f"{o.seconds:.0f}",
                      "[green]ok[/]" if o.ok else "[red]FAIL[/]", o.note)
    console.print(table)
    return outcomes


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    outcomes = run(events=3000 if quick else 20_000, poison_events=1000 if quick else 5_000,
                   freeze_s=20.0)
    return 0 if all(o.ok for o in outcomes) else 1
