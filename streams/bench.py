"""`streams bench`: where the time goes, on one machine, same texts, same models.

engine      our engine alone, batched
naive       one synchronous pipeline call per event (batch 1): a service calling the model per request
reference   plain transformers pipelines, batch_size=32, no bucketing: the obvious first code
end-to-end  the worker on the embedded broker, first produce -> last enriched record read back
ceiling     the same path with a no-op engine: the most the stream can feed a GPU, once per
            source (the librdkafka loop, the Faust agent: docs/sources.md)
traced      end-to-end again with every event traced, spans exported over OTLP gRPC to a
            receiver in this process; and a traced no-op run after each of the configured
            source's ceiling runs: tracing's own CPU per event, against the models' (the bound)
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .settings import SUPPORT_TICKET_LABELS, Settings

BENCH_TOPIC = "support.tickets"


def sample_texts(n: int) -> list[str]:
    rows = [json.loads(l) for l in resources.files("streams.samples").joinpath("samples.jsonl")
            .read_text().splitlines() if l.strip()]
    return [rows[i % len(rows)]["text"] for i in range(n)]


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_engine(engine, texts, labels, batch: int) -> float:
    engine.infer(texts[:batch], labels)  # warm-up
    t = time.perf_counter()
    for i in range(0, len(texts), batch):
        engine.infer(texts[i : i + batch], labels)
    return _rate(len(texts), time.perf_counter() - t)


def agreement(full: list, other: list) -> dict:
    """How far another engine's output (int8) is from full precision's on the same texts:
    the share of equal labels, of texts with exactly the same entity spans, and the entity F1
    with full precision's spans (label, start, end) as the truth."""
    spans = lambda inference: {(e.label, e.start, e.end) for e in inference.entities}  # noqa: E731
    pairs = [(spans(a), spans(b)) for a, b in zip(full, other)]
    tp = sum(len(a & b) for a, b in pairs)
    wrong = sum(len(a ^ b) for a, b in pairs)
    return {"labels": sum(a.classification.label == b.classification.label
                          for a, b in zip(full, other)) / len(full),
            "entities_exact": sum(a == b for a, b in pairs) / len(pairs),
            "entities_f1": 2 * tp / (2 * tp + wrong) if tp or wrong else 1.0}


def bench_int8(engine, settings: Settings, texts, labels, batch: int) -> dict:
    """The opt-in CPU int8 engine (STREAMS_QUANTIZE=int8): its speed, and its agreement with
    the full-precision `engine` on the same texts."""
    from .engine import Engine

    quantized = Engine.load(settings.ner_model, settings.classifier_model,
                            cache_dir=settings.model_cache, device="cpu",
                            max_batch=settings.model_batch, max_tokens=settings.max_tokens_per_pass,
                            quantize="int8")
    rate = bench_engine(quantized, texts, labels, batch)
    full = [r for i in range(0, len(texts), batch) for r in engine.infer(texts[i : i + batch], labels)]
    low = [r for i in range(0, len(texts), batch) for r in quantized.infer(texts[i : i + batch], labels)]
    return {"events_per_s": rate, "agreement": agreement(full, low)}


def _pipelines(engine):
    from transformers import pipeline

    ner = pipeline("token-classification", model=engine.extractor.model,
                   tokenizer=engine.extractor.tokenizer, aggregation_strategy="first",
                   device=engine.device)
    enc = engine.classifier.encoder
    feats = pipeline("feature-extraction", model=engine.classifier.model, tokenizer=enc.tokenizer,
                     device=engine.device, tokenize_kwargs={"truncation": True, "max_length": enc.max_length})
    return ner, feats


def _reference_classify(feats, texts, label_vecs, batch_size):
    out = feats(texts, batch_size=batch_size)
    vecs = np.stack([np.asarray(o[0]).mean(axis=0) for o in out])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return (vecs @ label_vecs.T).argmax(axis=1)


def bench_pipelines(engine, texts, labels, batch_size: int) -> float:
    ner, feats = _pipelines(engine)
    label_vecs = engine.classifier.embed([d for _, d in labels.descriptions])
    ner(texts[:2], batch_size=batch_size)
    t = time.perf_counter()
    if batch_size == 1:  # naive: one synchronous call per event
        for text in texts:
            ner(text)
            _reference_classify(feats, [text], label_vecs, 1)
    else:
        ner(texts, batch_size=batch_size)
        _reference_classify(feats, texts, label_vecs, batch_size)
    return _rate(len(texts), time.perf_counter() - t)


@dataclass
class _Rig:
    settings: Settings
    worker: subprocess.Popen
    reader: object
    producer: object


@contextmanager
def _worker_rig(log_dir: Path, name: str, **env_extra: str):
    """A fresh embedded broker and a worker subprocess that has joined its group and loaded
    its models (one warm-up event went through), with a producer and an enriched-topic reader."""
    from confluent_kafka import Producer

    from .broker import EmbeddedBroker, free_port
    from .kafka import consumer, ensure_topics

    with EmbeddedBroker(free_port(), log_path=log_dir / "bench-tansu.log") as broker:
        env = os.environ | {"STREAMS_KAFKA_BOOTSTRAP": broker.bootstrap,
                            "STREAMS_APP_ID": f"bench-{uuid.uuid4().hex[:6]}",
                            "STREAMS_KAFKA_SESSION_TIMEOUT_S": "6",
                            "STREAMS_HEALTH_PORT": str(free_port()), **env_extra}
        settings = Settings(kafka_bootstrap=broker.bootstrap)
        ensure_topics(settings)
        with (log_dir / f"bench-worker-{name}.log").open("wb") as log:
            worker = subprocess.Popen([sys.executable, "-m", "streams", "worker", "--loglevel", "warning"],
                                      env=env, stdout=log, stderr=subprocess.STDOUT)
            reader = consumer(settings, f"bench-reader-{uuid.uuid4().hex[:6]}")
            prod = rig = None
            try:
                reader.subscribe([f"{BENCH_TOPIC}.enriched"])
                prod = Producer(settings.librdkafka_config() | {"linger.ms": 5, "acks": "all",
                                                                 "log.connection.close": False})
                warm_ms = int(time.time() * 1000)
                prod.produce(BENCH_TOPIC, key=b"warm", timestamp=warm_ms,
                             value=json.dumps({"event_id": "warm", "text": "hello"}).encode())
                prod.flush(10)
                _read_by_key(reader, {b"warm": warm_ms}, 300)
                rig = _Rig(settings, worker, reader, prod)
                yield rig
            finally:
                if prod is not None:
                    prod.flush(10)  # a sustained run stops mid-send: no "still in queue" warning
                    if rig is not None:
                        rig.producer = None
                    prod = None  # destroyed before the broker stops: no reconnect noise
                reader.close()
                worker.terminate()
                worker.wait(60)


@contextmanager
def _span_sink():
    """An OTLP gRPC trace receiver on loopback that counts and drops spans: the worker's
    exporter does all its real work, the collector costs next to nothing."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    class Sink(trace_service_pb2_grpc.TraceServiceServicer):
        spans = 0

        def Export(self, request, context):  # noqa: N802 - the gRPC method name
            Sink.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", Sink
    finally:
        server.stop(grace=None)


def bench_traced(n: int, log_dir: Path, noop: bool = False) -> dict:
    """End-to-end with tracing on: every event sampled, exported over OTLP gRPC."""
    with _span_sink() as (endpoint, sink):
        result = bench_stream(n, noop=noop, log_dir=log_dir, name="traced",
                              OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
                              OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
        deadline = time.monotonic() + 10
        while sink.spans < n and time.monotonic() < deadline:
            time.sleep(0.2)
        result["spans_received"] = sink.spans
    return result


def bench_stream(n: int, noop: bool, log_dir: Path, name: str | None = None, **env: str) -> dict:
    """Worker subprocess on a fresh embedded broker; events/s and latency per event."""
    with _worker_rig(log_dir, name or ("noop" if noop else "models"),
                     STREAMS_ENGINE="noop" if noop else "models", **env) as rig:
        # Serialized before the clock starts: the load generator shares the worker's CPUs.
        events = [(f"b{i}".encode(), json.dumps({"event_id": f"b{i}", "text": text}).encode())
                  for i, text in enumerate(sample_texts(n))]
        sent_ms: dict[bytes, int] = {}
        cpu_before = _cpu_seconds(rig.worker.pid)
        start = time.time()
        for key, value in events:
            sent_ms[key] = now_ms = int(time.time() * 1000)
            rig.producer.produce(BENCH_TOPIC, key=key, value=value, timestamp=now_ms)
            rig.producer.poll(0)
        rig.producer.flush(60)
        latencies = _read_by_key(rig.reader, sent_ms, 600)
        elapsed = time.time() - start
        worker_cpu = _cpu_seconds(rig.worker.pid) - cpu_before
        rss_kb = _proc_status_kb(rig.worker.pid, "VmHWM")
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {"events": n, "received": len(latencies), "events_per_s": _rate(len(latencies), elapsed),
            "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)),
            "worker_peak_rss_mb": rss_kb / 1024,
            "worker_cpu_us_per_event": worker_cpu / max(1, len(latencies)) * 1e6}


def _backlog(settings: Settings, n: int) -> None:
    """`n` sample tickets waiting in the input topic (a worker restarted after an outage)."""
    from .kafka import producer

    prod = producer(settings, **{"log.connection.close": False})
    for i, text in enumerate(sample_texts(n)):
        prod.produce(BENCH_TOPIC, key=f"b{i}".encode(), value=json.dumps({"event_id": f"b{i}", "text": text}).encode())
        prod.poll(0)
    if prod.flush(60):
        raise RuntimeError("the backlog was not acknowledged by the broker")


def bench_from_launch(n: int, log_dir: Path, name: str, command: list[str], **env_extra: str) -> dict:
    """`command` (the worker, or the reference loop) launched on a fresh embedded broker with
    `n` tickets already waiting: seconds from process launch to the first and to the n-th
    output read back, and events/s over the whole (launch to n-th output). The reader is
    assigned the output partitions before the launch, so it joins no group and sees each
    output as soon as the broker has it."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    from .broker import EmbeddedBroker, free_port
    from .kafka import consumer, ensure_topics

    with EmbeddedBroker(free_port(), log_path=log_dir / f"bench-tansu-{name}.log") as broker:
        settings = Settings(kafka_bootstrap=broker.bootstrap)
        ensure_topics(settings)
        _backlog(settings, n)
        reader = consumer(settings, f"bench-reader-{uuid.uuid4().hex[:6]}")
        reader.assign([TopicPartition(f"{BENCH_TOPIC}.enriched", p, OFFSET_BEGINNING)
                       for p in range(settings.topic_partitions)])
        env = os.environ | {"STREAMS_KAFKA_BOOTSTRAP": broker.bootstrap,
                            "STREAMS_APP_ID": f"bench-{uuid.uuid4().hex[:6]}",
                            "STREAMS_KAFKA_SESSION_TIMEOUT_S": "6",
                            "STREAMS_HEALTH_PORT": str(free_port()), **env_extra}
        pending = {f"b{i}".encode() for i in range(n)}
        first = last = None
        with (log_dir / f"bench-launch-{name}.log").open("wb") as log:
            launched = time.monotonic()
            proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = launched + 600
                while pending and time.monotonic() < deadline and proc.poll() is None:
                    for msg in reader.consume(min(1000, len(pending)), 0.1):
                        if msg.error() or not msg.value() or msg.key() not in pending:
                            continue
                        pending.discard(msg.key())
                        last = time.monotonic() - launched
                        first = last if first is None else first
                cpu = _cpu_seconds(proc.pid) if proc.poll() is None else float("nan")
            finally:
                reader.close()
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    received = n - len(pending)
    return {"events": n, "received": received,
            "first_output_s": first if first is not None else float("inf"),
            "last_output_s": last if last is not None and not pending else float("inf"),
            "events_per_s": received / last if last and not pending else 0.0, "cpu_s": cpu}


def worker_command() -> list[str]:
    return [sys.executable, "-m", "streams", "worker", "--loglevel", "warning"]


def reference_command() -> list[str]:
    return [sys.executable, "-m", "streams.bench_reference"]


def bench_latency(rate: float, duration: float, log_dir: Path, warmup: float = 10.0) -> dict:
    """The worker (ready, group joined) under a steady `rate` of events/s: produce -> enriched
    latency per event, from the input record's timestamp to the enriched record read back,
    for the events sent in the `duration` seconds after `warmup` seconds of the same load
    (steady state: on CPU the first batches of each new shape are slower)."""
    with _worker_rig(log_dir, "latency") as rig:
        texts = sample_texts(256)
        sent = 0
        counted = 0  # events sent after the warm-up
        start = time.monotonic()
        latencies: list[float] = []
        pending: dict[bytes, int] = {}
        while (now := time.monotonic()) - start < warmup + duration:
            while sent < int((now - start) * rate):
                key = f"l{sent}".encode()
                now_ms = int(time.time() * 1000)
                if now - start >= warmup:
                    pending[key] = now_ms
                    counted += 1
                rig.producer.produce(BENCH_TOPIC, key=key, timestamp=now_ms, value=json.dumps(
                    {"event_id": f"l{sent}", "text": texts[sent % len(texts)]}).encode())
                sent += 1
            rig.producer.poll(0)
            for msg in rig.reader.consume(100, 0.02):
                produced = None if msg.error() else pending.pop(msg.key(), None)
                if produced is not None:
                    latencies.append(time.time() * 1000 - produced)
        rig.producer.flush(10)
        latencies += _read_by_key(rig.reader, pending, 60)
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {"rate": rate, "duration_s": duration, "warmup_s": warmup, "sent": counted,
            "received": len(latencies), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max())}


def bench_sustained(duration: float, rate: float, log_dir: Path, warmup: float = 60.0) -> dict:
    """The worker under a steady load for `duration` seconds; its RSS sampled every 2 s.
    Growth is measured from the end of warm-up (models loaded, allocator settled)."""
    samples: list[tuple[float, float]] = []
    sent = received = 0
    with _worker_rig(log_dir, "sustained") as rig:
        texts = sample_texts(24)
        start = time.monotonic()
        next_sample = start
        while (now := time.monotonic()) - start < duration:
            due = int((now - start) * rate)
            while sent < due:
                rig.producer.produce(BENCH_TOPIC, value=json.dumps(
                    {"event_id": f"s{sent}", "text": texts[sent % len(texts)]}).encode())
                sent += 1
            rig.producer.poll(0)
            received += len([m for m in rig.reader.consume(500, 0.1) if not m.error()])
            if now >= next_sample:
                samples.append((now - start, _proc_status_kb(rig.worker.pid, "VmRSS") / 1024))
                next_sample += 2.0
    after_warmup = [rss for t, rss in samples if t >= warmup] or [samples[-1][1]]
    return {"duration_s": duration, "rate": rate, "sent": sent, "received": received,
            "rss_after_warmup_mb": after_warmup[0], "rss_end_mb": after_warmup[-1],
            "rss_max_mb": max(after_warmup),
            "rss_growth_pct": (after_warmup[-1] - after_warmup[0]) / after_warmup[0] * 100,
            "rss_samples": samples}


def _proc_status_kb(pid: int, key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of a process, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return float(line.split()[1])
    return float("nan")


def _read_by_key(reader, sent_ms: dict[bytes, int], timeout: float) -> list[float]:
    """Latency per record, without decoding it: the enriched record's key is its input's key,
    and the input's timestamp was set at produce time, so the latency is now minus `sent_ms[key]`.
    Only the Confluent framing is checked; the tests decode every field. Decoding here would
    spend the CPU the worker is measured on (the two share this machine)."""
    latencies: list[float] = []
    pending = dict(sent_ms)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        # Ask for no more than are missing: consume() then returns when the last one arrives
        # instead of waiting out its timeout for a full chunk (up to 10 % of a short run).
        for msg in reader.consume(min(1000, len(pending)), 0.2):
            if msg.error():
                continue
            now_ms = time.time() * 1000
            sent = pending.pop(msg.key(), None)
            value = msg.value()
            if sent is None or not value or value[0] != 0:  # a duplicate, or not Confluent Avro
                continue
            latencies.append(now_ms - sent)
    return latencies


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _mean_run(runs: list[dict]) -> dict:
    """Several runs of one kind: the mean of each figure, the runs' events/s kept too."""
    mean = {k: float(np.mean([r[k] for r in runs])) for k, v in runs[0].items()
            if isinstance(v, (int, float))}
    mean["runs_events_per_s"] = [r["events_per_s"] for r in runs]
    return mean


PARTS = ("throughput", "launch", "latency")


def run(n_engine: int, n_stream: int, n_ceiling: int, out: Path, traced: bool = True,
        rounds: int = 3, bounds: dict | None = None, parts: tuple[str, ...] = PARTS,
        n_launch: int = 1000, latency_s: float = 60.0) -> dict:
    """All runs; the figures go to `out` (JSON) and a chart of them beside it (`out` with .png).
    `bounds` marks the chart; by default the bounds.json next to `out` (bench/bounds.json).
    `parts`: throughput (engine, naive, reference, end to end after ready, ceiling), launch
    (worker and reference loop from process launch), latency (p50/p99 at half the capacity)."""
    from .engine import Engine, LabelSet

    settings = Settings()
    engine = Engine.load(settings.ner_model, settings.classifier_model, cache_dir=settings.model_cache,
                         device=settings.device, max_batch=settings.model_batch,
                         max_tokens=settings.max_tokens_per_pass,
                         overlap_tokenization=settings.overlap_tokenization)
    labels = LabelSet.from_mapping(SUPPORT_TICKET_LABELS)
    texts = sample_texts(n_engine)
    results = {"device": str(engine.device), "texts": n_engine, "batch": settings.model_batch,
               "cpu_count": os.cpu_count(), "ratios": {}}
    out.parent.mkdir(parents=True, exist_ok=True)
    if "throughput" in parts:
        _run_throughput(results, engine, settings, texts, labels, n_stream, n_ceiling, out, traced, rounds)
    if "launch" in parts:
        _run_launch(results, n_launch, rounds, out.parent)
    if "latency" in parts:
        if "engine" not in results:
            results["engine"] = bench_engine(engine, texts, labels, settings.max_batch)
        # A forward pass: model_batch texts through both models, at the engine's measured rate.
        pass_s = settings.model_batch / results["engine"]
        rate = results["engine"] / 2
        results["latency"] = bench_latency(rate, latency_s, out.parent) | {
            "forward_pass_ms": pass_s * 1000, "batch_window_ms": settings.max_wait_s * 1000}
    del engine
    results["bench_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["chart"] = str(out.with_suffix(".png"))
    out.write_text(json.dumps(results, indent=2))
    if bounds is None and (out.parent / "bounds.json").exists():
        bounds = json.loads((out.parent / "bounds.json").read_text())
    plot(results, out.with_suffix(".png"), bounds)
    return results


def _run_launch(results: dict, n: int, rounds: int, log_dir: Path) -> None:
    """Worker and reference loop from process launch, alternated over `rounds` rounds; each
    figure is the median of its runs (one slow start-up must not decide a ratio)."""
    ours, ref = [], []
    for i in range(rounds):
        ours.append(bench_from_launch(n, log_dir, f"worker-{i}", worker_command()))
        ref.append(bench_from_launch(n, log_dir, f"reference-{i}", reference_command()))
    for key, runs in (("from_launch", ours), ("reference_from_launch", ref)):
        results[key] = {k: float(np.median([r[k] for r in runs])) for k in runs[0]} | {
            "runs_events_per_s": [r["events_per_s"] for r in runs],
            "runs_first_output_s": [r["first_output_s"] for r in runs]}
    ours, ref = results["from_launch"], results["reference_from_launch"]
    results["ratios"]["from_launch/reference"] = ours["events_per_s"] / ref["events_per_s"] \
        if ref["events_per_s"] else float("inf")
    results["ratios"]["first_output_reference/ours"] = ref["first_output_s"] / ours["first_output_s"]


def _run_throughput(results: dict, engine, settings: Settings, texts, labels, n_stream: int,
                    n_ceiling: int, out: Path, traced: bool, rounds: int) -> None:
    results["naive"] = bench_pipelines(engine, texts, labels, 1)
    results["reference"] = bench_pipelines(engine, texts, labels, 32)
    # Engine, end to end, end to end traced and end to end on the other source, over `rounds`
    # rounds; each figure is the mean of its runs. On a shared machine the same run varies by
    # 10 % from minute to minute, so every round is the mirror of the one before (engine, end to
    # end, traced, other; then other, traced, end to end, engine): the two runs of each ratio
    # are always side by side, and a machine that slows or speeds up steadily weighs on both
    # sides of a ratio alike. End to end runs on the configured source (`end_to_end`) and on the
    # other one too (`end_to_end_<other>`): both must keep up with the models.
    other = "librdkafka" if settings.source == "faust" else "faust"
    steps = {
        "engine": lambda: bench_engine(engine, texts, labels, settings.max_batch),
        "plain": lambda: bench_stream(n_stream, noop=False, log_dir=out.parent),
        "traced": lambda: bench_traced(n_stream, log_dir=out.parent),
        "other": lambda: bench_stream(n_stream, noop=False, log_dir=out.parent, name=f"models-{other}",
                                      STREAMS_SOURCE=other),
    }
    order = [step for step in steps if traced or step != "traced"]
    step_runs: dict[str, list] = {step: [] for step in steps}
    for r in range(rounds):
        for step in (order if r % 2 == 0 else order[::-1]):
            step_runs[step].append(steps[step]())
    if engine.device.type == "cpu":
        results["int8"] = bench_int8(engine, settings, texts, labels, settings.max_batch)
    results["engine"] = float(np.mean(step_runs["engine"]))
    results["engine_runs_events_per_s"] = step_runs["engine"]
    results["source"] = settings.source
    results["end_to_end"] = _mean_run(step_runs["plain"])
    results[f"end_to_end_{other}"] = _mean_run(step_runs["other"])
    # The stream ceiling of both sources (docs/sources.md): what each can carry, so the best of
    # `rounds` runs, the sources alternated. Another tenant's load only ever slows a run down
    # (the same run ranged 10,000-16,500 events/s within minutes here); every run is kept.
    # With tracing on, each configured-source ceiling run is followed by a traced no-op run:
    # what tracing alone costs the worker per event (tracing_cost, below).
    noop_cpu: dict[str, list[float]] = {"untraced": [], "traced": []}
    for key, source in (("stream_ceiling", "librdkafka"), ("stream_ceiling_faust", "faust")):
        results[key] = {"runs_events_per_s": []}
    for _ in range(rounds):
        for key, source in (("stream_ceiling", "librdkafka"), ("stream_ceiling_faust", "faust")):
            run = bench_stream(n_ceiling, noop=True, log_dir=out.parent, name=f"noop-{source}",
                               STREAMS_SOURCE=source)
            runs = results[key]["runs_events_per_s"] + [run["events_per_s"]]
            if run["events_per_s"] >= max(runs):
                results[key] = run
            results[key]["runs_events_per_s"] = runs
            if traced and source == settings.source:
                noop_cpu["untraced"].append(run["worker_cpu_us_per_event"])
                noop_cpu["traced"].append(bench_traced(max(1000, n_ceiling // 4), log_dir=out.parent,
                                                       noop=True)["worker_cpu_us_per_event"])
    results["ratios"] |= {
        "end_to_end/engine": results["end_to_end"]["events_per_s"] / results["engine"],
        f"end_to_end_{other}/engine": results[f"end_to_end_{other}"]["events_per_s"] / results["engine"],
        "engine/naive": results["engine"] / results["naive"],
        "engine/reference": results["engine"] / results["reference"],
    }
    if traced:
        results["end_to_end_traced"] = _mean_run(step_runs["traced"])
        results["ratios"]["traced/untraced"] = (results["end_to_end_traced"]["events_per_s"]
                                                / results["end_to_end"]["events_per_s"])
        # traced/untraced above swings 0.91-1.05 between back-to-back pairs of identical runs on
        # this shared machine (docs/benchmarks.md), wider than the 5 % it is meant to resolve. What
        # tracing costs is measured precisely with the no-op engine, where it is the only work
        # that differs: its worker CPU per event against the models' (the untraced end to end).
        results["tracing_cost"] = tracing_cost(noop_cpu["untraced"], noop_cpu["traced"],
                                               results["end_to_end"]["worker_cpu_us_per_event"])
        results["ratios"]["untraced/traced_cpu"] = results["tracing_cost"]["untraced/traced_cpu"]


def tracing_cost(noop_untraced: list[float], noop_traced: list[float], model_cpu_us: float) -> dict:
    """What tracing adds to the worker's CPU per event (traced minus untraced no-op runs, µs),
    and the share of a traced event's CPU that is not tracing: the models' CPU per event over
    the models' plus tracing's (>= 0.95: tracing costs at most ~5 %)."""
    cost = float(np.mean(noop_traced) - np.mean(noop_untraced))
    return {"us_per_event": cost, "noop_untraced_cpu_us_per_event": noop_untraced,
            "noop_traced_cpu_us_per_event": noop_traced, "end_to_end_cpu_us_per_event": model_cpu_us,
            "untraced/traced_cpu": model_cpu_us / (model_cpu_us + max(0.0, cost))}


# Which run each ratio compares with which: the chart marks, on the numerator's bar, the
# events/s the bound asks of it (bound x the denominator's figure).
_RUNS = [("naive", "naive (batch 1)"), ("reference", "reference (pipelines, 32)"),
         ("engine", "engine"), ("int8", "engine, int8 (opt-in, CPU)"), ("end_to_end", "end-to-end"),
         ("end_to_end_librdkafka", "end-to-end, librdkafka source"),
         ("end_to_end_faust", "end-to-end, Faust agent source"),
         ("end_to_end_traced", "end-to-end, traced"), ("stream_ceiling", "stream ceiling (no-op), librdkafka"),
         ("stream_ceiling_faust", "stream ceiling (no-op), Faust agent"),
         ("from_launch", "end-to-end from launch"),
         ("reference_from_launch", "reference loop from launch"),
         ("latency", "at half capacity")]
_RATIO_RUNS = {"end_to_end/engine": ("end_to_end", "engine"),
               "end_to_end_librdkafka/engine": ("end_to_end_librdkafka", "engine"),
               "end_to_end_faust/engine": ("end_to_end_faust", "engine"), "engine/naive": ("engine", "naive"),
               "engine/reference": ("engine", "reference"),
               "traced/untraced": ("end_to_end_traced", "end_to_end"),
               "from_launch/reference": ("from_launch", "reference_from_launch")}


def _events_per_s(results: dict, key: str) -> float | None:
    value = results.get(key)
    return value.get("events_per_s") if isinstance(value, dict) else value


def plot(results: dict, path: Path, bounds: dict | None = None) -> Path:
    """Draw a results dict (what `run` writes) as a PNG: events/s per run on a log axis, each
    round as a dot, each ratio's bound as a red tick on its run's bar (the bar must reach it),
    and the stream runs' latency percentiles. Agg backend: no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bounds = bounds or {}
    runs = [(key, name, _events_per_s(results, key)) for key, name in _RUNS
            if _events_per_s(results, key) is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6), gridspec_kw={"width_ratios": [3, 2]})
    fig.suptitle(f"streams bench on {results.get('device', '?')} ({results.get('cpu_count', '?')} cores), "
                 f"batch {results.get('batch', '?')}")
    rows = {key: i for i, (key, _, _) in enumerate(runs)}
    bars = left.barh(range(len(runs)), [v for *_, v in runs], color="#4c72b0")
    left.set_xscale("log")
    left.set_xlabel("events/s (log scale)")
    left.invert_yaxis()
    rounds = {"engine": results.get("engine_runs_events_per_s", [])}
    for key in ("end_to_end", "end_to_end_librdkafka", "end_to_end_faust", "end_to_end_traced"):
        rounds[key] = (results.get(key) or {}).get("runs_events_per_s", [])
    for key, values in rounds.items():
        if key in rows and values:
            left.plot(values, [rows[key]] * len(values), "o", color="black", ms=4,
                      label="one round" if key == "engine" else None)
    for key, _, value in runs:
        left.text(max([value, *rounds.get(key, [])]) * 1.12, rows[key], f"{value:,.1f}", va="center",
                  fontsize=8)
    marks = []  # (row, events/s the bound asks)
    notes: dict[str, list[str]] = {}  # per run: its ratios against their bounds, under its name
    for name, measured in results.get("ratios", {}).items():
        num, den = _RATIO_RUNS.get(name, (None, None))
        low = bounds.get("ratios", {}).get(name)
        notes.setdefault(num, []).append(f"{name} {measured:.2f}" + (f" (bound {low})" if low else ""))
        if low and num in rows and _events_per_s(results, den) is not None:
            marks.append((rows[num], low * _events_per_s(results, den)))
    for key, floor in _ceiling_bounds(bounds):
        if key in rows:
            marks.append((rows[key], floor))
            notes.setdefault(key, []).append(f"bound {floor:,}/s")
    for i, (row, need) in enumerate(marks):
        left.plot([need, need], [row - 0.42, row + 0.42], color="#c44e52", lw=2.5,
                  label="bound: the bar must reach it" if i == 0 else None)
        if runs[row][2] < need:  # below its bound: `--check` fails on it
            bars[row].set_color("#dd8452")
            if "below its bound" not in [b.get_label() for b in bars]:
                bars[row].set_label("below its bound")
    left.set_yticks(range(len(runs)), [name + "".join(f"\n{n}" for n in notes.get(key, []))
                                       for key, name, _ in runs], fontsize=8)
    if marks or any(rounds.values()):
        left.legend(loc="upper right", fontsize=8)
    left.set_xlim(right=max(v for *_, v in runs) * 4)

    stream = [(name, results[key]) for key, name in _RUNS
              if isinstance(results.get(key), dict) and "p50_ms" in results[key]]
    percentiles = [p for p in ("p50_ms", "p90_ms", "p99_ms") if any(p in s for _, s in stream)]
    width = 0.8 / max(1, len(percentiles))
    for j, p in enumerate(percentiles):
        xs = [i + (j - (len(percentiles) - 1) / 2) * width for i in range(len(stream))]
        right.bar(xs, [s.get(p, float("nan")) for _, s in stream], width, label=p.removesuffix("_ms"))
    right.set_xticks(range(len(stream)), [name for name, _ in stream], rotation=15, fontsize=8)
    right.set_yscale("log")
    right.set_ylabel("ms (log scale)")
    right.set_title("latency percentiles\n(input record timestamp to enriched record read back)",
                    fontsize=9)
    if percentiles:
        right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def check(results: dict, bounds: dict) -> list[str]:
    failures = []
    for name, low in bounds.get("ratios", {}).items():
        if name in results["ratios"] and results["ratios"][name] < low:
            failures.append(f"{name} = {results['ratios'][name]:.2f} < {low}")
    for key, floor in _ceiling_bounds(bounds):
        if key in results and results[key]["events_per_s"] < floor:
            source = " (Faust agent)" if key == "stream_ceiling_faust" else ""
            failures.append(f"stream ceiling{source} {results[key]['events_per_s']:.0f}/s < {floor}/s")
    passes = bounds.get("latency_p99_forward_passes")
    if passes and "latency" in results:
        lat = results["latency"]
        limit = lat["batch_window_ms"] + passes * lat["forward_pass_ms"]
        if not lat["p99_ms"] <= limit:
            failures.append(f"latency p99 {lat['p99_ms']:.0f} ms > batch window + {passes} forward "
                            f"passes = {limit:.0f} ms")
        if lat["received"] < lat["sent"]:
            failures.append(f"latency run: {lat['received']} of {lat['sent']} events came back")
    for key in ("from_launch", "reference_from_launch"):
        if key in results and results[key]["received"] < results[key]["events"]:
            failures.append(f"{key}: {results[key]['received']:.0f} of {results[key]['events']:.0f} "
                            "events came back")
    return failures


def _ceiling_bounds(bounds: dict) -> list[tuple[str, int]]:
    """(results key, events/s) of each source's stream-ceiling bound that bounds.json sets."""
    return [(key, bounds[name]) for key, name in (("stream_ceiling", "stream_ceiling_events_per_s"),
                                                  ("stream_ceiling_faust", "stream_ceiling_faust_events_per_s"))
            if bounds.get(name)]
