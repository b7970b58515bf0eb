"""`streams`: the operator's commands (broker, worker, produce, tail, demo, models)."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .settings import ORDER_NOTE_LABELS, SUPPORT_TICKET_LABELS, Settings

app = typer.Typer(help="Kafka enrichment service: entities + topic labels on domain events.",
                  no_args_is_help=True, add_completion=False)
# Lines are never wrapped by rich (a pipe is 80 columns to it): one event stays one line.
console = Console(soft_wrap=True, highlight=False)
SAMPLES = "samples.jsonl"


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _port_of(bootstrap: str) -> int:
    return int(bootstrap.split(",")[0].rsplit(":", 1)[1])


@app.command()
def broker(port: int = typer.Option(9092, help="TCP port on 127.0.0.1")) -> None:
    """Run the embedded tansu broker in the foreground (memory storage) until Ctrl-C."""
    from .broker import BrokerError, EmbeddedBroker

    try:
        embedded = EmbeddedBroker(port).start()
    except BrokerError as exc:
        _fail(str(exc))
    console.print(f"tansu listening on {embedded.bootstrap} (pid {embedded.process.pid}); Ctrl-C stops it")
    try:
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        embedded.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        embedded.stop()


@app.command()
def worker(loglevel: Optional[str] = typer.Option(None, help="debug, info, warning; default STREAMS_LOG_LEVEL")) -> None:
    """Run the enrichment worker (same as `faust -A streams.app worker`). Logs are JSON lines
    unless STREAMS_LOG_FORMAT=text. Runs on jemalloc when installed (STREAMS_ALLOCATOR)."""
    _use_configured_allocator()
    settings = Settings()
    from .telemetry import configure_logging, logging_config

    loglevel = (loglevel or settings.log_level).upper()
    configure_logging(loglevel, settings.log_format)
    # Join the consumer group while torch is imported and the models load (a few seconds of
    # waiting on the coordinator, and the first fetches): the librdkafka source's consumer is
    # subscribed here by librdkafka's threads; for the Faust agent the models load in a thread
    # while Faust starts, and the agent waits for them (streams.app).
    early = _early_consumer(settings)
    loading = _load_in_background(settings) if settings.source == "faust" else None
    from faust.worker import Worker

    from .app import Runtime, app as faust_app, startup_failure

    faust_app.conf.logging_config = logging_config(loglevel, settings.log_format)
    if loading is not None:
        faust_app.runtime_loading = loading
        _use_uvloop()
    else:
        try:
            faust_app.runtime = Runtime.load(settings)  # fail fast, with a clear message
        except BaseException as exc:
            if early is not None:
                early.close()  # leave the group at once, not after the session timeout
            if isinstance(exc, Exception):
                _fail(startup_failure(exc))
            raise
        faust_app.early_consumer = early
    Worker(faust_app, loglevel=loglevel, quiet=True).execute_from_commandline()


def _load_in_background(settings: Settings):
    """`Runtime.load` started in a thread of its own; the future the agent's app waits on."""
    from concurrent.futures import Future
    import threading

    future: Future = Future()

    def load() -> None:
        from .pipeline import Runtime

        try:
            future.set_result(Runtime.load(settings))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on it
            future.set_exception(exc)

    threading.Thread(target=load, name="load-models", daemon=True).start()
    return future


def _early_consumer(settings: Settings):
    """The librdkafka source's consumer, subscribed before the heavy imports; None for the
    Faust agent (Faust's consumer joins when Faust starts)."""
    if settings.source != "librdkafka":
        return None
    from .consume import BatchConsumer

    return BatchConsumer(settings, [r.input for r in settings.topics])


def _use_uvloop() -> None:
    """The Faust agent's event loop is its bottleneck; uvloop cuts its cost per event
    (`faust -A streams.app worker -L uvloop` does the same)."""
    try:
        import uvloop
    except ImportError:
        return
    import asyncio

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _use_configured_allocator() -> None:
    """Before anything heavy is imported: re-exec under jemalloc (streams.allocator)."""
    from .allocator import AllocatorError, ensure_allocator

    try:
        ensure_allocator(Settings().allocator)
    except AllocatorError as exc:
        _fail(str(exc))


def _read_events(file: Optional[Path]) -> list[dict]:
    if file is None:
        text = resources.files("streams.samples").joinpath(SAMPLES).read_text()
    else:
        text = file.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@app.command()
def produce(
    topic: Optional[str] = typer.Option(None, help="target topic; default: each sample's own topic"),
    file: Optional[Path] = typer.Option(None, help="JSONL file of events; default: bundled samples"),
    fmt: str = typer.Option("json", "--format", help="json or avro (Confluent wire format)"),
    count: int = typer.Option(0, help="send this many events, cycling the input with fresh ids"),
) -> None:
    """Send the bundled sample events (or a JSONL file) to the input topics."""
    from .kafka import ensure_topics, producer
    from .serde import SchemaCatalog

    settings = Settings()
    events = _read_events(file)
    if not events:
        _fail("no events to send")
    total = count or len(events)
    catalog = SchemaCatalog.from_settings(settings) if fmt == "avro" else None
    ensure_topics(settings)
    prod = producer(settings)
    run = uuid.uuid4().hex[:6]
    sent = 0
    for i in range(total):
        event = dict(events[i % len(events)])
        target = topic or event.pop("topic", None) or settings.topics[0].input
        event.pop("topic", None)
        if count:
            event["event_id"] = f"{event.get('event_id', 'evt')}-{run}-{i}"
        if catalog is not None:
            value = catalog.encode_input({k: v for k, v in event.items()}, target)
        else:
            value = json.dumps(event).encode()
        prod.produce(target, key=str(event.get("event_id", "")).encode() or None, value=value)
        sent += 1
        prod.poll(0)
    remaining = prod.flush(30)
    if remaining:
        _fail(f"{remaining} events were not acknowledged by the broker")
    console.print(f"sent {sent} events ({fmt})")


def _decoded(settings: Settings, topics: list[str], from_beginning: bool, timeout: float,
             count: int, dead_topics: list[str] = ()) -> Iterator[tuple[str, dict]]:
    """Enriched records decoded; records of `dead_topics` (dead letters, the input's bytes)
    as {"event_id": key, "dead_letter_reason": ...}."""
    from .kafka import consumer, ensure_topics
    from .serde import SchemaCatalog

    catalog = SchemaCatalog.from_settings(settings)
    ensure_topics(settings, topics)
    cons = consumer(settings, f"streams-tail-{uuid.uuid4().hex[:8]}", from_beginning=from_beginning)
    cons.subscribe([*topics, *dead_topics])
    seen = 0
    deadline = time.monotonic() + timeout
    try:
        while (not count or seen < count) and time.monotonic() < deadline:
            msg = cons.poll(0.5)
            if msg is None or msg.error():
                continue
            seen += 1
            if msg.topic() in dead_topics:
                reason = dict(msg.headers() or []).get("__streams.errors.reason", b"?").decode()
                yield msg.topic(), {"event_id": (msg.key() or b"").decode(), "dead_letter_reason": reason}
                continue
            yield msg.topic(), catalog.decode(msg.value(), msg.topic())
    finally:
        cons.close()


def _text(value) -> str:
    """Data in a printed line: rich markup in it is shown, not applied; control characters
    (newlines included) are escaped, so one event stays one line."""
    return escape(_CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode(), str(value)))


_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")


def _show(topic: str, record: dict, as_json: bool = False) -> None:
    """One line per event: JSON (`--json`), or id, topic, label (score), entities, fields."""
    if as_json:
        print(json.dumps({"topic": topic, **record}, default=str, ensure_ascii=False), flush=True)
        return
    if "dead_letter_reason" in record:
        console.print(f"[bold]{_text(record['event_id'])}[/] [dim]{_text(topic)}[/] [red]dead-lettered:[/] "
                      f"{_text(record['dead_letter_reason'])}")
        return
    cls = record["classification"]
    ents = ", ".join(f"{_text(e['label'])}={_text(repr(e['text']))}" for e in record["entities"]) or "-"
    line = (f"[bold]{_text(record['event_id'])}[/] [dim]{_text(topic)}[/] "
            f"[cyan]{_text(cls['label'])}[/] ({cls['score']:.2f})  entities: {ents}")
    fields = record.get("fields")  # the topic's typed fields, when it declares them (LLM)
    if fields:
        line += "  fields: " + ", ".join(f"{_text(k)}={_text(repr(v))}" for k, v in fields.items())
    console.print(line)


@app.command()
def tail(
    topic: Optional[list[str]] = typer.Option(None, help="enriched topic(s); default: all"),
    count: int = typer.Option(0, help="stop after this many records (0: until --timeout)"),
    from_beginning: bool = typer.Option(True, "--from-beginning/--latest"),
    timeout: float = typer.Option(30.0, help="stop after this many seconds"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object per line"),
) -> None:
    """Decode and print enriched events."""
    settings = Settings()
    topics = topic or [r.output for r in settings.topics]
    for t, record in _decoded(settings, topics, from_beginning, timeout, count):
        _show(t, record, as_json)


@app.command()
def demo(timeout: float = typer.Option(300.0, help="give up after this many seconds"),
         llm: bool = typer.Option(False, "--llm", help="support tickets labelled and typed "
                                  "(SupportTicketFields) by the LLM engine (make run-llm)"),
         as_json: bool = typer.Option(False, "--json", help="print each outcome as one JSON object "
                                      "per line")) -> None:
    """Start the embedded broker and a worker, send the samples, print the enriched events,
    stop everything (what `make run` does)."""
    from .broker import BrokerError, EmbeddedBroker

    if llm:
        os.environ["STREAMS_TOPICS"] = json.dumps(LLM_DEMO_TOPICS)
        timeout = max(timeout, 900.0)
    settings = Settings()
    port = _port_of(settings.kafka_bootstrap)
    try:
        embedded = EmbeddedBroker(port).start()
    except BrokerError as exc:
        _fail(str(exc))
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / "streams-demo-worker.log"
    worker_proc = None
    try:
        console.print(f"broker: tansu on {embedded.bootstrap} (pid {embedded.process.pid})")
        from .broker import free_port
        from .kafka import ensure_topics

        ensure_topics(settings.model_copy(update={"kafka_bootstrap": embedded.bootstrap}))  # as a platform team would

        env = os.environ | {"STREAMS_KAFKA_BOOTSTRAP": embedded.bootstrap,
                            "STREAMS_HEALTH_PORT": os.environ.get("STREAMS_HEALTH_PORT", str(free_port()))}
        with log_path.open("wb") as log:
            worker_proc = subprocess.Popen([sys.executable, "-m", "streams", "worker"], env=env,
                                           stdout=log, stderr=subprocess.STDOUT)
        console.print(f"worker: pid {worker_proc.pid}, log {log_path}")
        events = _read_events(None)
        subprocess.run([sys.executable, "-m", "streams", "produce"], env=env, check=True)
        wanted = {e["event_id"] for e in events}
        seen: set[str] = set()
        dead: set[str] = set()
        # With the LLM an output the token cap cut off is dead-lettered (llm_truncated): an
        # outcome too, shown with its reason.
        dead_topics = [r.dlq for r in settings.topics] if llm else []
        for t, record in _decoded(Settings(kafka_bootstrap=embedded.bootstrap),
                                  [r.output for r in settings.topics], True, timeout, len(wanted),
                                  dead_topics=dead_topics):
            seen.add(record["event_id"])
            if "dead_letter_reason" in record:
                dead.add(record["event_id"])
            _show(t, record, as_json)
            if worker_proc.poll() is not None:
                break
        if seen != wanted:
            _fail(f"only {len(seen)}/{len(wanted)} events came back; worker log: {log_path}", 1)
        if dead:
            console.print(f"[green]all {len(wanted)} sample events have their outcome[/]: "
                          f"{len(wanted) - len(dead)} enriched, {len(dead)} dead-lettered")
        else:
            console.print(f"[green]all {len(wanted)} sample events enriched[/]")
    finally:
        if worker_proc and worker_proc.poll() is None:
            worker_proc.send_signal(signal.SIGTERM)
            try:
                worker_proc.wait(30)
            except subprocess.TimeoutExpired:
                worker_proc.kill()
        embedded.stop()
        console.print("stopped worker and broker")


# `streams demo --llm`: support tickets take their label and typed fields from the LLM, their
# entities from the encoder NER (exact offsets, cheap); order notes stay on the encoder models.
LLM_DEMO_TOPICS = [
    {"input": "support.tickets", "labels": SUPPORT_TICKET_LABELS, "label_from": "llm",
     "fields": "SupportTicketFields"},
    {"input": "orders.notes", "labels": ORDER_NOTE_LABELS},
]


@app.command()
def models(llm: Optional[bool] = typer.Option(None, "--llm/--no-llm", help="also prepare the LLM "
                                               "(convert its GGUF once); default: when a topic uses it")) -> None:
    """Prepare (convert once) and check the configured models, then print what was loaded."""
    from .engine import Engine, ModelLoadError

    settings = Settings()
    try:
        engine = Engine.load(settings.ner_model, settings.classifier_model,
                             cache_dir=settings.model_cache, device=settings.device)
        for m in engine.models:
            console.print(f"{m.task}: {m.name} ({m.version}) on {engine.device}")
        if settings.uses_llm if llm is None else llm:
            from .engine.llm_loading import resolve_llm

            path, info = resolve_llm(settings.llm_model, settings.model_cache)
            console.print(f"llm: {info.name} ({info.version}) at {path}")
    except ModelLoadError as exc:
        _fail(str(exc))


@app.command()
def bench(
    texts: int = typer.Option(512, help="texts for the engine/naive/reference runs"),
    events: int = typer.Option(2048, help="events for the end-to-end run"),
    ceiling_events: int = typer.Option(20000, help="events for the no-op stream-ceiling run"),
    out: Path = typer.Option(Path("bench/results.json"), help="where the figures are written"),
    bounds: Path = typer.Option(Path("bench/bounds.json"), help="ratio bounds for --check"),
    check: bool = typer.Option(False, "--check", help="exit 1 when a ratio is below its bound"),
    duration: float = typer.Option(0, help="instead: a sustained run of this many seconds, "
                                           "reporting worker RSS growth after warm-up"),
    rate: float = typer.Option(30.0, help="events/s offered during --duration"),
    rounds: int = typer.Option(3, help="rounds of engine, end-to-end, traced and ceiling runs, alternated (each round the mirror of the one before); each figure is the mean of its runs, a ceiling the best"),
    traced: bool = typer.Option(True, "--traced/--no-traced",
                                help="also run end-to-end with tracing on (OTLP gRPC) and compare"),
    engine: str = typer.Option("encoder", help="encoder (NER + classifier) or llm (the LLM engine "
                                               "on the support-ticket samples, docs/llm.md)"),
    llm_texts: int = typer.Option(32, help="--engine llm: texts for the batched, naive, grammar "
                                          "and end-to-end runs"),
    llm_naive: int = typer.Option(0, help="--engine llm: texts for the one-per-call run; 0: the "
                                          "same texts as the batched run (a fair ratio: a pass "
                                          "lasts as long as its longest output)"),
    only: str = typer.Option("throughput,launch,latency", help="which parts: throughput (engine, "
                             "reference, end to end after ready, ceiling), launch (worker and "
                             "reference loop from process launch), latency (at half the capacity)"),
    launch_events: int = typer.Option(1000, help="tickets waiting when the worker / reference loop is launched"),
    latency_s: float = typer.Option(60.0, help="seconds of the half-capacity latency run"),
) -> None:
    """Benchmark engine, naive, reference, end-to-end and stream ceiling; print a table."""
    _use_configured_allocator()  # the engine runs measured here on the worker's allocator
    from rich.table import Table

    from . import bench as b

    if engine == "llm":
        _bench_llm(llm_texts, llm_naive or llm_texts, out.with_name("results-llm.json"), bounds, check)
        return
    if engine != "encoder":
        _fail(f"--engine {engine!r}: use encoder or llm")

    if duration:
        r = b.bench_sustained(duration, rate, out.parent, warmup=min(60.0, duration / 5))
        out.with_name("sustained.json").write_text(json.dumps(r, indent=2))
        console.print(f"sustained {duration:.0f}s at {rate:.0f} events/s: sent {r['sent']}, "
                      f"received {r['received']}; worker RSS {r['rss_after_warmup_mb']:.0f} MB after "
                      f"warm-up -> {r['rss_end_mb']:.0f} MB at the end (max {r['rss_max_mb']:.0f} MB), "
                      f"growth {r['rss_growth_pct']:+.1f} %")
        if check and r["rss_growth_pct"] >= 5:
            raise typer.Exit(1)
        return

    parts = tuple(p.strip() for p in only.split(",") if p.strip())
    if not parts or set(parts) - set(b.PARTS):
        _fail(f"--only {only!r}: a comma-separated list of {', '.join(b.PARTS)}")
    r = b.run(texts, events, ceiling_events, out, traced=traced, rounds=rounds, parts=parts,
              n_launch=launch_events, latency_s=latency_s)
    table = Table(title=f"streams bench on {r['device']} ({r['cpu_count']} cores), batch {r['batch']}")
    for col in ("run", "events/s", "p50 ms", "p99 ms", "peak RSS MB"):
        table.add_column(col, justify="right" if col != "run" else "left")
    if "engine" in r:
        table.add_row("engine", f"{r['engine']:.1f}", "", "", "")
    if "naive" in r:
        table.add_row("naive (batch 1)", f"{r['naive']:.1f}", "", "", "")
        table.add_row("reference (pipelines, 32)", f"{r['reference']:.1f}", "", "", "")
    if "int8" in r:
        table.add_row("engine, int8 (opt-in, CPU)", f"{r['int8']['events_per_s']:.1f}", "", "", "")
    source = {"faust": "Faust agent", "librdkafka": "librdkafka"}.get(r.get("source", ""), "")
    for key, name in (("end_to_end", f"end-to-end, {source} source (STREAMS_SOURCE)" if source else "end-to-end"),
                      ("end_to_end_librdkafka", "end-to-end, librdkafka source"),
                      ("end_to_end_faust", "end-to-end, Faust agent source"),
                      ("stream_ceiling", "stream ceiling (no-op), librdkafka"),
                      ("stream_ceiling_faust", "stream ceiling (no-op), Faust agent"),
                      ("end_to_end_traced", "end-to-end, traced")):
        if key not in r:
            continue
        s = r[key]
        table.add_row(name, f"{s['events_per_s']:.1f}", f"{s['p50_ms']:.0f}", f"{s['p99_ms']:.0f}",
                      f"{s['worker_peak_rss_mb']:.0f}")
    console.print(table)
    if "from_launch" in r:
        launch = Table(title=f"from process launch, {r['from_launch']['events']:.0f} tickets waiting "
                             f"(median of {len(r['from_launch']['runs_events_per_s'])})")
        for col in ("run", "events/s, launch to last output", "launch to first output s",
                    "launch to last output s"):
            launch.add_column(col, justify="right" if col != "run" else "left")
        for key, name in (("reference_from_launch", "reference loop (consume 32, pipelines 32)"),
                          ("from_launch", "streams worker")):
            s = r[key]
            launch.add_row(name, f"{s['events_per_s']:.1f}", f"{s['first_output_s']:.1f}",
                           f"{s['last_output_s']:.1f}")
        console.print(launch)
    if "latency" in r:
        lat = r["latency"]
        console.print(f"latency at {lat['rate']:.1f} events/s (half the engine's rate) for {lat['duration_s']:.0f} s "
                      f"after {lat['warmup_s']:.0f} s of warm-up: "
                      f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms "
                      f"({lat['received']}/{lat['sent']} back); batch window {lat['batch_window_ms']:.0f} ms, "
                      f"one forward pass {lat['forward_pass_ms']:.0f} ms")
    for name, value in r["ratios"].items():
        console.print(f"{name}: {value:.2f}")
    if "int8" in r:
        a = r["int8"]["agreement"]
        console.print(f"int8 vs full precision: {r['int8']['events_per_s'] / r['engine']:.2f}x the speed; "
                      f"labels agree on {a['labels']:.1%} of texts, entity spans on {a['entities_exact']:.1%} "
                      f"(entity F1 {a['entities_f1']:.3f})")
    if "end_to_end_traced" in r:
        console.print(f"spans received over OTLP gRPC in the traced run: {r['end_to_end_traced']['spans_received']}")
    if "tracing_cost" in r:
        t = r["tracing_cost"]
        console.print(f"tracing costs the worker {t['us_per_event']:.0f} µs of CPU per event (no-op engine, "
                      f"traced minus untraced), the models {t['end_to_end_cpu_us_per_event']:.0f} µs")
    console.print(f"written to {out}")
    if check:
        failures = b.check(r, json.loads(bounds.read_text()))
        for f in failures:
            console.print(f"[red]below bound:[/] {f}")
        if failures:
            raise typer.Exit(1)


def _bench_llm(n_texts: int, n_naive: int, out: Path, bounds: Path, check: bool) -> None:
    from rich.table import Table

    from . import bench_llm as bl

    r = bl.run(n_texts, n_naive, n_texts, out)
    table = Table(title=f"streams bench --engine llm: {r['model']} on {r['device']} ({r['dtype']}, "
                        f"{r.get('card', str(r['cpu_count']) + ' cores')}), {r['texts']} tickets, "
                        f"up to {r['llm_batch']} rows per step, prompt prefix {r['prompt_prefix_tokens']} tokens")
    for col in ("run", "events/s", "output tokens/s", "note"):
        table.add_column(col, justify="left" if col in ("run", "note") else "right")
    table.add_row("LLM engine, batched", f"{r['batched']['events_per_s']:.3f}",
                  f"{r['batched']['output_tokens_per_s']:.1f}", f"{r['batched']['failed']} dead-lettered")
    table.add_row("naive (one per call)", f"{r['naive']['events_per_s']:.3f}",
                  f"{r['naive']['output_tokens_per_s']:.1f}", "")
    g = r["grammar"]
    table.add_row("grammar overhead", "", "", f"{g['overhead_pct']:+.1f} % per token "
                  f"({g['constrained_s_per_token'] * 1000:.0f} vs {g['unconstrained_s_per_token'] * 1000:.0f} ms); "
                  f"xgrammar's share of the constrained runs {g['grammar_share_pct']:.1f} %")
    if "end_to_end" in r:
        e = r["end_to_end"]
        table.add_row("end-to-end (broker, worker)", f"{e['events_per_s']:.3f}", "",
                      f"{e['enriched']} enriched + {e['dead_lettered']} dead-lettered of {e['events']}")
    console.print(table)
    for name, value in r["ratios"].items():
        console.print(f"{name}: {value:.2f}")
    console.print(f"written to {out}")
    if check:
        failures = bl.check(r, json.loads(bounds.read_text()))
        for f in failures:
            console.print(f"[red]below bound:[/] {f}")
        if failures:
            raise typer.Exit(1)


def _parse_time(value: str | None):
    from datetime import datetime, timezone

    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        _fail(f"{value!r} is not an ISO-8601 time, e.g. 2026-11-01T00:00:00Z")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@app.command()
def replay(
    topic: str = typer.Option(..., help="input topic to re-enrich"),
    from_: Optional[str] = typer.Option(None, "--from", help="start time (ISO-8601, UTC if no zone)"),
    to: Optional[str] = typer.Option(None, help="end time, exclusive (default: now); a future time is clamped to now"),
    from_offset: Optional[int] = typer.Option(None, help="start offset instead of --from"),
    partitions: Optional[str] = typer.Option(None, help="comma-separated partitions, e.g. 0,3"),
    output_topic: Optional[str] = typer.Option(None, help="default: the topic's enriched topic"),
    model_version: Optional[str] = typer.Option(None, help="version written into replayed records"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print ranges and counts, write nothing"),
    limit: Optional[int] = typer.Option(None, help="stop after this many records (resume later)"),
) -> None:
    """Re-enrich a time range of a topic with the current (or a new) model, in its own consumer
    group; re-running the same command resumes an interrupted replay."""
    _use_configured_allocator()
    from datetime import datetime, timezone

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    from . import replay as rp

    if (from_ is None) == (from_offset is None):
        _fail("give exactly one of --from or --from-offset")
    overrides = {"model_version": model_version} if model_version else {}
    settings = Settings(**overrides)
    if topic not in settings.routes:
        _fail(f"{topic!r} is not a configured input topic ({', '.join(settings.routes)})")
    now = datetime.now(timezone.utc)
    start = _parse_time(from_) or datetime.fromtimestamp(0, timezone.utc)
    end = min(_parse_time(to) or now, now)
    start_ms, end_ms = rp.to_ms(start), rp.to_ms(end)
    if start_ms >= end_ms:
        console.print(f"nothing to replay: the range {start.isoformat()} .. {end.isoformat()} is empty")
        return
    chosen = [int(p) for p in partitions.split(",")] if partitions else None
    output = output_topic or settings.route(topic).output
    if output in settings.routes:
        _fail(f"--output-topic {output!r} is an input topic: a replay never writes into its input")
    try:
        ranges = rp.plan(settings, topic, start_ms, chosen, from_offset)
    except ValueError as exc:
        _fail(str(exc))
    for r in ranges:
        if r.note:
            console.print(r.note, markup=False, highlight=False, soft_wrap=True)
    rid = rp.replay_id(topic, from_ or f"offset:{from_offset}", to, chosen, output, model_version)
    try:
        resumed = rp.replayed_offsets(settings, topic, ranges, rid)
    except ValueError as exc:
        _fail(str(exc))
    counts, done, skipped = rp.count_range(settings, topic, ranges, start_ms, end_ms, done_below=resumed)
    table = Table(title=f"replay {rid}: {topic} -> {output}, {start.isoformat()} .. {end.isoformat()}")
    for col in ("partition", "start offset", "end offset (at start)", "records in range", "already replayed",
                "outside the time range"):
        table.add_column(col, justify="right")
    for r in ranges:
        table.add_row(str(r.partition), str(r.start), str(r.end), str(counts[r.partition]),
                      str(done[r.partition]), str(skipped[r.partition]))
    console.print(table)
    total, total_done, total_skipped = sum(counts.values()), sum(done.values()), sum(skipped.values())
    if total_skipped:
        console.print(f"{total_skipped} records outside the time range are skipped", soft_wrap=True)
    if total == 0:
        console.print("nothing to replay: no records in that range")
        return
    if total_done:
        console.print(f"resuming replay {rid}: {total_done} of {total} records were replayed by an earlier run",
                      soft_wrap=True)
    if dry_run:
        console.print(f"dry run: {total - total_done} records would be re-enriched; nothing written", soft_wrap=True)
        return
    if output not in {r.output for r in settings.topics}:
        from .kafka import ensure_topics

        ensure_topics(settings, [output])  # a new output topic exists before it is written

    from .pipeline import Runtime
    from .serde.registry import SchemaError

    runtime = Runtime.load(settings)
    started = time.perf_counter()
    with Progress(TextColumn("partition {task.fields[p]}"), BarColumn(), MofNCompleteColumn(),
                  console=console) as bars:
        tasks = {r.partition: bars.add_task("", total=counts[r.partition], completed=done[r.partition],
                                            p=r.partition) for r in ranges}

        def advance(progress, batch):
            for rec in batch:
                bars.advance(tasks[rec.partition])

        try:
            result = rp.run_replay(runtime, settings, topic=topic, start_ms=start_ms, end_ms=end_ms,
                                   ranges=ranges, output=output, rid=rid, limit=limit, on_batch=advance)
        except KeyboardInterrupt:
            console.print("interrupted: run the same command again to resume")
            raise typer.Exit(130)
        except (ValueError, SchemaError) as exc:  # an unregistered output subject, an offset out of range
            _fail(str(exc))
    elapsed = time.perf_counter() - started
    console.print(f"replay {rid}: read {result.read}, enriched {result.enriched}, "
                  f"dead-lettered {result.dead}, skipped {result.skipped} outside the time range, "
                  f"{result.read / elapsed:.1f} events/s", soft_wrap=True)


offsets_app = typer.Typer(help="Inspect and move consumer group offsets.", no_args_is_help=True)
app.add_typer(offsets_app, name="offsets")


@offsets_app.command("reset")
def offsets_reset(
    group: str = typer.Option(..., help="the consumer group to rewind (e.g. the live worker's)"),
    to_datetime: str = typer.Option(..., help="rewind to the first record at/after this time"),
    topic: Optional[list[str]] = typer.Option(None, help="topic(s); default: all input topics"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the new offsets, change nothing"),
) -> None:
    """Rewind a consumer group to a time, like kafka-consumer-groups --reset-offsets
    --to-datetime; refuses (exit 2) while the group is active: stop its workers first."""
    from . import replay as rp

    settings = Settings()
    when_ms = rp.to_ms(_parse_time(to_datetime))
    topics = topic or [r.input for r in settings.topics]
    try:
        rp.refuse_if_active(settings, group)  # before anything is read; the broker checks again on write
        new = rp.offsets_at(settings, group, topics, when_ms)
        current = rp.committed_offsets(settings, group, new)
    except ValueError as exc:
        _fail(str(exc))
    for tp in new:
        before = current.get((tp.topic, tp.partition), -1)
        shown = str(before) if before >= 0 else "none"
        console.print(f"{tp.topic}[{tp.partition}]: {shown} -> {tp.offset}", markup=False, highlight=False)
    if dry_run:
        console.print(f"dry run: group {group} unchanged", markup=False, highlight=False)
        return
    try:
        rp.reset_offsets(settings, group, new)
    except ValueError as exc:
        _fail(str(exc))
    console.print(f"group {group}: {len(new)} partition offsets reset", markup=False, highlight=False)
