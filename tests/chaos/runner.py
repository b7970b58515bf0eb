"""Chaos suite against the embedded broker: kills, a frozen broker, poison, SIGTERM.

`make chaos` runs the full sizes (`python -m tests.chaos [--seed N]`); `make test` runs a
shorter version (tests/chaos/test_chaos.py). Prints a table and exits non-zero on any loss, on
duplicates above the bound, on a worker that exited on its own, or on a SIGTERM that did not
land inside a batch. Every random choice comes from one seed, printed first; CHAOS_SEED=N (or
--seed N) replays a run.

Duplicate bound. The loop (streams/worker.py) takes one batch of at most STREAMS_MAX_BATCH
records, enriches it, waits for the broker's acknowledgement of every output, then commits
(synchronously) before it takes the next. Records librdkafka prefetched (STREAMS_MAX_IN_FLIGHT)
have produced nothing yet, so a killed worker re-delivers them without duplicating anything.
What a kill can duplicate is the batch produced but not yet committed: at most MAX_BATCH
outputs per kill. A worker that stops on SIGTERM finishes and commits its batch: 0.

`--source faust` runs the same scenarios against the Faust agent (docs/sources.md), whose
window is wider: Faust commits the acked offsets every second or every 4 x MAX_BATCH acks, so
a kill can also duplicate what was acked since its last commit (`kill_window`)."""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
import time
from dataclasses import dataclass, field
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
    failures: list[str] = field(default_factory=list)  # a worker that died, a SIGTERM between batches

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and not self.failures
                and (self.duplicate_bound is None or self.duplicates <= self.duplicate_bound))


BATCH_LINE = re.compile(r"batch \S+: (\d+) enriched, (\d+) dead-lettered")  # streams/worker.py's line

# Small batches and prefetch, so the duplicate bound (kills x batch) is tight against the sizes.
CHAOS_ENV = {"STREAMS_MAX_BATCH": 100, "STREAMS_MAX_IN_FLIGHT": 500}


def seed_from(argv: list[str] | None = None) -> int:
    """--seed N, else CHAOS_SEED, else a fresh random seed (printed by run())."""
    argv = argv or []
    if "--seed" in argv:
        return int(argv[argv.index("--seed") + 1])
    if os.environ.get("CHAOS_SEED"):
        return int(os.environ["CHAOS_SEED"])
    return random.SystemRandom().randrange(2**32)


SOURCES = ("librdkafka", "faust")


def _scenario(ctx, **env) -> Scenario:
    return Scenario(ctx["bootstrap"], ctx["models"], ctx["cache"], ctx["logs"],
                    extra_env={k: str(v) for k, v in (CHAOS_ENV | {"STREAMS_SOURCE": ctx["source"]}
                                                      | env).items()})


def kill_window(settings) -> int:
    """Outputs a SIGKILL can duplicate: delivered, not yet committed. librdkafka commits each
    batch: the batch in flight. Faust: also the acks since its last commit (`broker_commit_every`,
    4 x max_batch) and its stream buffer (streams/app.py `_faust_settings`)."""
    if settings.source == "librdkafka":
        return settings.max_batch
    return 4 * settings.max_batch + max(2 * settings.max_batch, settings.max_in_flight) + settings.max_batch


def _until(worker: WorkerProcess, done):
    """Stop collecting when `done` holds or the worker has exited (no waiting out a timeout)."""
    return lambda c: done(c) or worker.proc.poll() is not None


def _exited(worker: WorkerProcess, label: str, failures: list[str]) -> None:
    """A worker the suite did not stop must still be running."""
    code = worker.proc.poll()
    if code is not None:
        failures.append(f"worker {label} exited on its own (status {code}); see {worker.log_path}")


def _messages(worker: WorkerProcess) -> list[str]:
    """The worker's log messages (JSON lines; a line that is not JSON counts as its text)."""
    out = []
    for line in worker.log().splitlines():
        try:
            out.append(str(json.loads(line)["message"]))
        except (ValueError, KeyError, TypeError):
            out.append(line)
    return out


def _batch_lines(worker: WorkerProcess) -> int:
    return sum(1 for m in _messages(worker) if m.startswith("batch "))


BETWEEN_BATCHES = "no batch finished after the stop request: the SIGTERM landed between batches"


def landed_mid_batch(messages: list[str]) -> str | None:
    """None when the log shows the stop request, then a batch finishing (its line is written
    after enrichment, before delivery and commit), then the loop stopping, with no failed
    commit; else what is missing."""
    stop = next((i for i, m in enumerate(messages) if m.startswith("shutting down")), None)
    if stop is None:
        return "no 'shutting down' line: the worker never saw the SIGTERM"
    after = messages[stop + 1:]
    batch = next((i for i, m in enumerate(after) if m.startswith("batch ")), None)
    if batch is None:
        return BETWEEN_BATCHES
    if any(m.startswith("commit failed") for m in after):
        return "the batch in flight was not committed"
    if not any(m.startswith(("worker loop stopped", "agent stopped")) for m in after[batch + 1:]):
        return "the loop did not stop after finishing the batch"
    return None


def _processed(workers: list[WorkerProcess]) -> int:
    """Records the workers' batch lines account for (enriched + dead-lettered, repeats included)."""
    total = 0
    for worker in workers:
        for m in _messages(worker):
            hit = BATCH_LINE.match(m)
            if hit:
                total += int(hit.group(1)) + int(hit.group(2))
    return total


def _committed_total(settings, topic: str) -> int:
    from confluent_kafka import TopicPartition

    from streams.replay import committed_offsets

    tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
    return sum(max(o, 0) for o in committed_offsets(settings, settings.app_id, tps).values())


def kill_three_times(ctx, n: int, rng: random.Random) -> Outcome:
    """Each kill is timed by the workers' own batch lines (not by a reader that lags behind),
    and must land while part of the stream is still uncommitted, or it tested nothing."""
    sc = _scenario(ctx)
    settings = sc.settings
    produce(settings, sc.input, json_events(n, prefix="k"))
    started = time.monotonic()
    failures: list[str] = []
    kills, workers = 3, []
    for kill in range(kills):
        worker = WorkerProcess(sc, f"kill{kill}").start()
        workers.append(worker)
        target = int(n * rng.uniform(0.15, 0.3) * (kill + 1))
        deadline = time.monotonic() + 180
        while _processed(workers) < target and worker.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        _exited(worker, f"kill{kill}", failures)
        worker.kill()
        committed = _committed_total(settings, sc.input)
        if committed >= n:
            failures.append(f"kill {kill} landed after all {n} records were committed: it tested nothing")
    final = WorkerProcess(sc, "final").start()
    got = collect(settings, sc, until=_until(final, lambda c: len(c.enriched_ids) >= n), timeout=300)
    _exited(final, "final", failures)
    final.stop()
    ids = got.enriched_ids
    bound = kills * kill_window(settings)
    duplicates = len(got.enriched) - len(ids)
    return Outcome("SIGKILL x3", n, len(ids), len(got.dead), len({f"k-{i}" for i in range(n)} - ids),
                   duplicates, bound, time.monotonic() - started,
                   f"duplicates {duplicates} <= bound {kills} kills x window {kill_window(settings)} "
                   f"(batch {settings.max_batch}; prefetch is not processed)", failures)


def freeze_broker(ctx, n: int, broker: EmbeddedBroker, freeze_s: float) -> Outcome:
    sc = _scenario(ctx)
    settings = sc.settings
    produce(settings, sc.input, json_events(n, prefix="f"))
    started = time.monotonic()
    worker = WorkerProcess(sc).start()
    failures: list[str] = []
    collect(settings, sc, until=_until(worker, lambda c: len(c.enriched_ids) >= n // 5), timeout=180)
    broker.freeze()
    time.sleep(freeze_s)
    broker.thaw()
    got = collect(settings, sc, until=_until(worker, lambda c: len(c.enriched_ids) >= n), timeout=300)
    _exited(worker, "frozen", failures)
    worker.stop()
    ids = got.enriched_ids
    # No kill: only the batch in flight at the freeze (<= MAX_BATCH outputs) can be duplicated,
    # twice at most: its outputs re-sent by the producer after the broker had written them
    # (a broker that does not de-duplicate idempotent retries), and the whole batch
    # re-delivered when its commit fails because the freeze outlasted the session (Faust:
    # with what was acked since its last commit, `kill_window`).
    bound = settings.max_batch + kill_window(settings)
    return Outcome(f"broker frozen {freeze_s:.0f}s", n, len(ids), len(got.dead),
                   len({f"f-{i}" for i in range(n)} - ids), len(got.enriched) - len(ids), bound,
                   time.monotonic() - started, "worker survived" if not failures else "WORKER DIED", failures)


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
    failures: list[str] = []
    got = collect(settings, sc, until=_until(worker, lambda c: good <= c.enriched_ids and
                  poison_keys <= {k for k, _, _ in c.dead}), timeout=300)
    _exited(worker, "poison", failures)
    worker.stop()
    dead_keys = {k for k, _, h in got.dead if h.get("__streams.errors.reason")}
    lost = len(good - got.enriched_ids) + len(poison_keys - dead_keys)
    return Outcome("10% poison", n, len(got.enriched_ids), len(dead_keys), lost,
                   len(got.enriched) - len(got.enriched_ids), 0, time.monotonic() - started,
                   f"{len(poison_keys)} poison, each with a reason header", failures)


def _wait_into_a_batch(worker: WorkerProcess, rng: random.Random) -> None:
    """Wait for two batch lines, then 20-50 % of the interval between them (enrichment plus
    delivery, commit and take, as measured on this machine): a SIGTERM now lands inside the
    next batch."""
    marks: list[float] = []
    deadline = time.monotonic() + 60
    seen = _batch_lines(worker)
    while len(marks) < 2 and worker.proc.poll() is None and time.monotonic() < deadline:
        now = _batch_lines(worker)
        if now != seen:
            seen = now
            marks.append(time.monotonic())
        time.sleep(0.01)
    interval = marks[1] - marks[0] if len(marks) == 2 else 1.0
    time.sleep(rng.uniform(0.2, 0.5) * interval)


def sigterm_mid_batch(ctx, n: int, grace_s: float, rng: random.Random, tries: int = 3) -> Outcome:
    """Real models, so a batch of 64 takes about a second on a CPU. SIGTERM goes out part way
    into a batch's interval, so it lands while that batch is being enriched; the log must show
    that batch finish and the loop stop after it, the exit must be 0 within the grace, and
    nothing may be lost or duplicated. On a loaded machine a stop can still land between two
    batches (the worker then stops at once, which is also correct, but is not what this scenario
    tests): a fresh worker is then stopped the same way, up to `tries` stops; one must land
    mid-batch. Every stopped worker must exit 0 within the grace."""
    sc = _scenario(ctx, STREAMS_SHUTDOWN_GRACE_S=grace_s, STREAMS_NER_MODEL="rampart",
                   STREAMS_CLASSIFIER_MODEL="all-minilm-l6-v2", STREAMS_MAX_BATCH=64)
    settings = sc.settings
    produce(settings, sc.input, json_events(n, prefix="t"))
    started = time.monotonic()
    failures: list[str] = []
    stops: list[str] = []
    landed = False
    for attempt in range(1, tries + 1):
        worker = WorkerProcess(sc, f"term-{attempt}").start()
        _wait_into_a_batch(worker, rng)
        _exited(worker, f"term-{attempt} (before SIGTERM)", failures)
        if failures:
            break
        t0 = time.monotonic()
        code = worker.stop(timeout=grace_s + 30)
        took = time.monotonic() - t0
        problem = landed_mid_batch(_messages(worker))
        stops.append(f"exit {code} after {took:.1f}s")
        if code != 0 or took > grace_s:
            failures.append(f"stop {attempt}: exit {code} after {took:.1f}s (grace {grace_s:.0f}s); "
                            f"see {worker.log_path}")
            break
        if problem is None:
            landed = True
            break
        if problem != BETWEEN_BATCHES:
            failures.append(f"stop {attempt}: {problem}; see {worker.log_path}")
            break
    if not failures and not landed:
        failures.append(f"no batch finished after the stop request in {tries} stops: each SIGTERM "
                        "landed between batches")
    second = WorkerProcess(sc, "after-term").start()
    got = collect(settings, sc, until=_until(second, lambda c: len(c.enriched_ids) >= n), timeout=300)
    _exited(second, "after-term", failures)
    second.stop()
    ids = got.enriched_ids
    lost = len({f"t-{i}" for i in range(n)} - ids)
    return Outcome("SIGTERM mid-batch", n, len(ids), len(got.dead), lost,
                   len(got.enriched) - len(ids), 0, time.monotonic() - started,
                   f"stops: {', '.join(stops)} (grace {grace_s:.0f}s); the last finished the batch "
                   "in flight and committed it" if not failures else "", failures)


def run(events: int = 20_000, poison_events: int = 5_000, freeze_s: float = 20.0,
        seed: int | None = None, console: Console | None = None, source: str = "librdkafka",
        sigterm_events: int = 640) -> list[Outcome]:
    console = console or Console(width=180)
    seed = seed_from() if seed is None else seed
    console.print(f"chaos seed {seed} (replay this run with CHAOS_SEED={seed}), source {source}")
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        root = Path(tmp)
        with EmbeddedBroker(free_port(), log_path=root / "tansu.log") as broker:
            ctx = {"bootstrap": broker.bootstrap, "models": build_tiny_models(root / "models"),
                   "cache": root / "cache", "logs": root, "source": source}
            outcomes = [kill_three_times(ctx, events, rng),
                        freeze_broker(ctx, max(1000, events // 4), broker, freeze_s),
                        poison_tenth(ctx, poison_events, rng),
                        sigterm_mid_batch(ctx, sigterm_events, grace_s=20.0, rng=rng)]
    table = Table(title=f"chaos suite, source {source} (embedded tansu broker, tiny models)")
    for col in ("scenario", "sent", "enriched", "DLQ", "lost", "duplicates", "bound", "s", "result", "note"):
        table.add_column(col)
    for o in outcomes:
        table.add_row(o.name, str(o.sent), str(o.enriched), str(o.dead), str(o.lost), str(o.duplicates),
                      "-" if o.duplicate_bound is None else str(o.duplicate_bound), f"{o.seconds:.0f}",
                      "[green]ok[/]" if o.ok else "[red]FAIL[/]", o.note)
    console.print(table)
    for o in outcomes:
        for failure in o.failures:
            console.print(f"[red]{o.name}:[/] {failure}", highlight=False)
    console.print(f"chaos seed {seed}")
    return outcomes


def main(argv: list[str]) -> int:
    """[--quick] [--seed N] [--source librdkafka|faust|both] (default both, one after the other)."""
    quick = "--quick" in argv
    source = argv[argv.index("--source") + 1] if "--source" in argv else "both"
    if source not in (*SOURCES, "both"):
        raise SystemExit(f"--source {source}: use librdkafka, faust or both")
    seed, ok = seed_from(argv), True
    for each in SOURCES if source == "both" else (source,):
        outcomes = run(events=3000 if quick else 20_000, poison_events=1000 if quick else 5_000,
                       freeze_s=20.0, seed=seed, source=each)
        ok = ok and all(o.ok for o in outcomes)
    return 0 if ok else 1
