"""`streams`: the operator's commands (broker, worker, produce, tail, demo, models)."""

from __future__ import annotations

import json
import logging
import re
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import samples
from .settings import LLM_DEMO_TOPICS, SHADOW_DEMO_TOPICS, Settings

app = typer.Typer(help="Kafka enrichment service: entities + topic labels on domain events.",
                  no_args_is_help=True, add_completion=False)
# Lines are never wrapped by rich (a pipe is 80 columns to it): one event stays one line.
console = Console(soft_wrap=True, highlight=False)


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
    # A SIGTERM (a rollout, a scale-down) can come while torch imports and the models load,
    # before Faust's handlers are in place: stop then too, leave the group, and exit 0.
    signal.signal(signal.SIGTERM, _raise_stop_requested)
    try:
        _run_worker(loglevel)
    except _StopRequested:
        logging.getLogger("streams.cli").info("stopped during start-up (SIGTERM); nothing was taken")
        # At once, without the interpreter's shutdown: the thread loading the models may hold
        # the import lock, and the shutdown would wait on it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


class _StopRequested(BaseException):
    """SIGTERM before the worker's own handlers were installed."""


def _raise_stop_requested(*_) -> None:
    raise _StopRequested()


def _run_worker(loglevel: Optional[str]) -> None:
    _use_configured_allocator()
    settings = _settings()
    from .telemetry import configure_logging, logging_config

    loglevel = (loglevel or settings.log_level).upper()
    configure_logging(loglevel, settings.log_format)
    # Join the consumer group while torch is imported and the models load (a few seconds of
    # waiting on the coordinator, and the first fetches): the librdkafka source's consumer is
    # subscribed here by librdkafka's threads; for the Faust agent the models load in a thread
    # while Faust starts, and the agent waits for them (streams.app).
    early = _early_consumer(settings)
    try:
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
            except Exception as exc:
                _fail(startup_failure(exc))
    except BaseException:
        if early is not None:
            early.close()  # leave the group at once, not after the session timeout
        raise
    faust_app.early_consumer = early
    Worker(faust_app, loglevel=loglevel, quiet=True).execute_from_commandline()


def _settings() -> Settings:
    """The settings, or exit 2 with what is wrong: never a traceback, and never a value (a
    password or the redaction key); the messages name the variables."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        _fail("invalid settings: " + "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False, include_context=False)))


def _load_in_background(settings: Settings):
    """`Runtime.load` started in a thread of its own; the future the agent's app waits on."""
    from concurrent.futures import Future
    import threading

    future: Future = Future()

    def load() -> None:
        from .runtime import Runtime

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
    from .source.librdkafka import BatchConsumer

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
        ensure_allocator(_settings().allocator)
    except AllocatorError as exc:
        _fail(str(exc))


def _read_events(file: Optional[Path]) -> list[dict]:
    if file is None:
        return samples.events()
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


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
    """One line per event: JSON (`--json`), or id, topic, label (score), entities, the redacted
    text (topics with a redaction policy), fields (each with the LLM's confidence in it, where
    the record has one)."""
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
    if record.get("redacted_text") is not None:
        line += f"  redacted: {_text(repr(record['redacted_text']))}"
    fields = record.get("fields")  # the topic's typed fields, when it declares them (LLM)
    if fields:
        confidence = record.get("field_confidence") or {}
        line += "  fields: " + ", ".join(
            f"{_text(k)}={_text(repr(v))}" + (f" ({confidence[k]:.2f})" if k in confidence else "")
            for k, v in fields.items())
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
         shadow: bool = typer.Option(False, "--shadow", help="each route shadowed by an LLM-label "
                                     "candidate on every event; then `streams compare` of each live "
                                     "output with its shadow topic (make run-shadow)"),
         as_json: bool = typer.Option(False, "--json", help="print each outcome as one JSON object "
                                      "per line")) -> None:
    """Start the embedded broker and a worker, send the samples, print the enriched events,
    stop everything (what `make run` does)."""
    from .broker import BrokerError, EmbeddedBroker

    if llm and shadow:
        _fail("--llm or --shadow, not both")
    # --llm/--shadow: their topics, for this command's settings and (STREAMS_TOPICS) its subprocesses'.
    demo_topics = LLM_DEMO_TOPICS if llm else SHADOW_DEMO_TOPICS if shadow else None
    topics = {"topics": demo_topics} if demo_topics else {}
    if llm or shadow:
        timeout = max(timeout, 900.0)
    settings = Settings(**topics)
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

        local = Settings(**topics, kafka_bootstrap=embedded.bootstrap)
        ensure_topics(local)  # as a platform team would

        health_port = settings.health_port if "health_port" in settings.model_fields_set else free_port()
        env = os.environ | {"STREAMS_KAFKA_BOOTSTRAP": embedded.bootstrap,
                            "STREAMS_HEALTH_PORT": str(health_port)}
        if demo_topics:
            env["STREAMS_TOPICS"] = json.dumps(demo_topics)
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
        for t, record in _decoded(local, [r.output for r in settings.topics], True, timeout, len(wanted),
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
        if shadow:
            _compare_shadows(local, len(wanted), timeout, worker_proc)
    finally:
        if worker_proc and worker_proc.poll() is None:
            worker_proc.send_signal(signal.SIGTERM)
            try:
                worker_proc.wait(30)
            except subprocess.TimeoutExpired:
                worker_proc.kill()
        embedded.stop()
        console.print("stopped worker and broker")


def _compare_shadows(settings: Settings, events: int, timeout: float, worker_proc) -> None:
    """`streams demo --shadow`: once the candidates have an outcome for every event (a shadow
    record or a shadow dead letter), each live output compared with its shadow topic."""
    from . import compare as cmp

    shadows = settings.shadow_routes()
    done = 0
    for _ in _decoded(settings, [r.output for r in shadows], True, timeout, events,
                      dead_topics=[r.dlq for r in shadows]):
        done += 1
        if worker_proc.poll() is not None:
            break
    console.print(f"the candidates' outcomes: {done} of {events}")
    for route in settings.topics:
        a, b = route.output, route.candidate.output
        catalog = cmp.catalog_for(settings, [a, b])
        result = cmp.compare(*(cmp.read_enriched(settings, t, catalog=catalog) for t in (a, b)))
        console.print(f"[bold]streams compare {a} {b}[/]")
        for part in cmp.report(result):
            console.print(_text(part) if isinstance(part, str) else part)


@app.command("eval")
def eval_(
    engine: str = typer.Option("encoder", help="encoder: labels and entities from the encoder models; "
                               "llm: support tickets labelled and typed by the LLM (as demo --llm)"),
    llm_entities: bool = typer.Option(False, "--llm-entities", help="with --engine llm: the tickets' "
                                      "entities from the LLM too (default: the encoder NER)"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="also write every figure to this file"),
    data: Optional[Path] = typer.Option(None, help="a labelled JSONL file; default: the bundled set"),
    limit: int = typer.Option(0, help="only the first N events of each topic (0: all)"),
) -> None:
    """Measure the engines on the hand-labelled set, in process (no Kafka): label accuracy,
    typed-field precision/recall, grounding, entity F1, calibration (docs/accuracy.md)."""
    from . import eval as evaluation
    from .engine import ModelLoadError

    if engine not in evaluation.ENGINES:
        _fail(f"--engine {engine!r}: use one of {', '.join(evaluation.ENGINES)}")
    if llm_entities and engine != "llm":
        _fail("--llm-entities goes with --engine llm")

    progress_console = Console(stderr=True, soft_wrap=True, highlight=False)

    def progress(topic: str, done: int, total: int) -> None:
        progress_console.print(f"[dim]{_text(topic)}: {done}/{total} events[/]")

    try:
        report = evaluation.evaluate(engine, llm_entities=llm_entities, data=data, limit=limit,
                                     progress=progress)
    except ModelLoadError as exc:
        _fail(str(exc))
    for table in evaluation.tables(report):
        console.print(table)
    failures = ", ".join(f"{n} {reason}" for reason, n in report["failures"].items())
    console.print(f"{report['events']} events on {report['device']}; engine failed on: {failures or 'none'}; "
                  f"models loaded in {report['load_seconds']}s, inference {report['infer_seconds']}s")
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        console.print(f"figures written to {_text(json_path)}")


@app.command()
def models(llm: Optional[bool] = typer.Option(None, "--llm/--no-llm", help="also prepare the LLM "
                                               "(convert its GGUF once); default: when a topic uses it")) -> None:
    """Prepare (convert once) and check the configured models, then print what was loaded."""
    from .engine import EncoderEngine, ModelLoadError

    settings = Settings()
    try:
        engine = EncoderEngine.load(settings.ner_model, settings.classifier_model,
                             cache_dir=settings.model_cache, device=settings.device)
        for m in engine.models:
            console.print(f"{m.task}: {m.name} ({m.version}) on {engine.device}")
        if settings.uses_llm if llm is None else llm:
            from .engine.llm_loading import resolve_llm

            path, info = resolve_llm(settings.llm_model, settings.model_cache)
            console.print(f"llm: {info.name} ({info.version}) at {path}")
    except ModelLoadError as exc:
        _fail(str(exc))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             add_help_option=False)
def bench(ctx: typer.Context) -> None:
    """Benchmark engine, naive, reference, end-to-end and stream ceiling; print a table.
    The bench/ of a source checkout, with the bench extra (= python -m bench; --help: its options)."""
    if "--help" not in ctx.args:
        _use_configured_allocator()  # the engine runs measured here on the worker's allocator
    _bench_module("cli").main(ctx.args, prog_name="streams bench")


def _bench_module(name: str):
    """bench/<name>.py, imported only when a bench command runs: the service depends on nothing
    in bench/. A checkout's bench/ sits beside this package (an editable install runs from there)."""
    from importlib import import_module

    from .settings import REPO_ROOT

    try:
        return import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != "bench":
            _fail(f"streams bench: {exc.name} is missing: pip install -e '.\\[bench]' in the checkout")
        if not (REPO_ROOT / "bench" / "__init__.py").is_file():
            _fail("streams bench runs the bench/ tree of a source checkout, which this installation "
                  "lacks (the service image ships without it): in a checkout, pip install -e "
                  "'.\\[bench]', then streams bench or python -m bench")
        sys.path.insert(0, str(REPO_ROOT))
        return import_module(f"bench.{name}")


@app.command("redaction-recall")
def redaction_recall(
    n: int = typer.Option(240, help="generated texts (bench/pii_corpus.py)"),
    seed: int = typer.Option(28, help="the generator's seed"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="also write the figures to this file"),
) -> None:
    """Run the configured entity model and redaction on labelled generated texts and print, per
    entity type, the share of its characters left readable in the redacted text (docs/redaction.md).
    In process, no Kafka; needs a source checkout (bench/)."""
    from rich.table import Table

    from .engine import ModelLoadError

    try:
        report = _bench_module("redaction_recall").run(n, seed)
    except ModelLoadError as exc:
        _fail(str(exc))
    table = Table(title=f"redaction recall: {report['model']} on {report['texts']} texts (seed {seed}), "
                        f"{report['device']}; labelled characters left readable, and values left whole")
    # Short headers: the table fits 80 columns (a pipe); the title says what they are.
    for col in ("type", "values", "chars", "left", "share left", "values whole"):
        table.add_column(col, justify="left" if col == "type" else "right", no_wrap=True)
    for row in [*report["types"], report["all"]]:
        table.add_row(row["label"], str(row["values"]), str(row["chars"]), str(row["chars_left"]),
                      f"{row['left_share']:.1%}", str(row["values_whole"]))
    console.print(table)
    share = report["other_chars_redacted"] / max(report["other_chars"], 1)
    console.print(f"characters that are not personal data but were redacted: {report['other_chars_redacted']} "
                  f"of {report['other_chars']} ({share:.1%}); NER {report['ner_seconds']}s")
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")


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

    from .runtime import Runtime
    from .serde.registry import SchemaError

    runtime = Runtime.load(settings.without_candidates())  # a replay runs no candidate
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


@app.command()
def compare(
    a: str = typer.Argument(..., metavar="A", help="enriched topic A, the reference (e.g. the live output)"),
    b: str = typer.Argument(..., metavar="B", help="enriched topic B (e.g. a replay's --output-topic, a shadow topic)"),
    from_: Optional[str] = typer.Option(None, "--from", help="first input event time (ISO-8601, UTC if no "
                                        "zone, or epoch ms); default: the beginning"),
    to: Optional[str] = typer.Option(None, help="end time, exclusive; default: everything up to each "
                                     "partition's end now"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="also write every figure to this file"),
    chart: Optional[Path] = typer.Option(None, "--chart", help="also draw the figures as a PNG (matplotlib)"),
) -> None:
    """Join two enriched topics by event id and print, per input topic, joined/only-in-one
    counts, label agreement and confusion, typed-field agreement, entity span F1 and score
    shifts (docs/replay.md). Reads up to each partition's end now; commits nothing."""
    from . import compare as cmp
    from . import replay as rp
    from .serde.registry import SchemaError

    settings = _settings()
    start_ms, end_ms = (None if v is None else int(v) if v.lstrip("-").isdigit() else rp.to_ms(_parse_time(v))
                        for v in (from_, to))
    try:
        catalog = cmp.catalog_for(settings, [a, b])
        sides = [cmp.read_enriched(settings, t, start_ms, end_ms, catalog=catalog) for t in (a, b)]
    except (ValueError, SchemaError) as exc:
        _fail(str(exc))
    result = cmp.compare(*sides)
    for part in cmp.report(result):
        console.print(_text(part) if isinstance(part, str) else part)
    if json_path is not None:
        json_path.write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        console.print(f"figures written to {_text(json_path)}")
    if chart is not None:
        try:
            cmp.plot(result, chart)
        except ImportError:
            _fail("--chart needs matplotlib: pip install matplotlib (or the bench extra)")
        console.print(f"chart written to {_text(chart)}")


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
