"""The runs through the worker: a worker subprocess on a fresh embedded broker, fed sample
tickets by a producer in this process, its enriched records read back by key.

bench_stream     n events as fast as they can be produced: events/s, latency, the worker's CPU;
                 with the models, the engine's duty cycle and mean batch fill (its /metrics)
bench_traced     the same with every event traced, spans exported over OTLP gRPC to a receiver
                 in this process (bench/otlp.py)
bench_from_launch  n tickets waiting, then a command (the worker, or the reference loop) launched:
                 seconds to the first and the n-th output
bench_latency    a steady rate: latency per event in the steady state
bench_sustained  a steady rate for a long time: the worker's RSS
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streams import samples
from streams.settings import Settings

from . import corpus as generated
from .otlp import span_sink

BENCH_TOPIC = "support.tickets"
# The bench's reader of enriched records: a measuring instrument, it must not add a wait of its
# own. tansu holds a fetch until its max wait ends even when data arrives (docs/sources.md,
# "the fetch wait"): at librdkafka's default 500 ms every output read back looked up to 0.5 s
# late, the same for our worker and the reference loop.
READER = {"fetch.wait.max.ms": 10}


CORPORA = ("tickets", "samples")


def sample_texts(n: int) -> list[str]:
    """`n` texts of the bundled samples, every topic's, repeated in order."""
    return samples.texts(n)


def corpus_texts(corpus: str, n: int) -> list[str]:
    """`n` texts of a bench corpus: "tickets", generated support tickets of similar length,
    all different (bench/corpus.py), or "samples", the bundled samples repeated."""
    if corpus == "tickets":
        return generated.texts(n)
    if corpus == "samples":
        return sample_texts(n)
    raise ValueError(f"corpus {corpus!r}: use {' or '.join(CORPORA)}")


def per_second(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


@dataclass
class _Rig:
    settings: Settings
    worker: subprocess.Popen
    reader: object
    producer: object
    health_port: int  # the worker's /metrics


@contextmanager
def worker_rig(log_dir: Path, name: str, **env_extra: str):
    """A fresh embedded broker and a worker subprocess that has joined its group and loaded
    its models (one warm-up event went through), with a producer and an enriched-topic reader."""
    from confluent_kafka import Producer

    from streams.broker import EmbeddedBroker, free_port
    from streams.kafka import consumer, ensure_topics

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
            reader = consumer(settings, f"bench-reader-{uuid.uuid4().hex[:6]}", **READER)
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
                rig = _Rig(settings, worker, reader, prod, int(env["STREAMS_HEALTH_PORT"]))
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


def bench_traced(n: int, log_dir: Path, noop: bool = False) -> dict:
    """End-to-end with tracing on: every event sampled, exported over OTLP gRPC."""
    with span_sink() as (endpoint, sink):
        result = bench_stream(n, noop=noop, log_dir=log_dir, name="traced",
                              OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
                              OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
        deadline = time.monotonic() + 10
        while sink.spans < n and time.monotonic() < deadline:
            time.sleep(0.2)
        result["spans_received"] = sink.spans
    return result


def bench_stream(n: int, noop: bool, log_dir: Path, name: str | None = None, corpus: str = "samples",
                 **env: str) -> dict:
    """Worker subprocess on a fresh embedded broker, `n` texts of `corpus`; events/s and
    latency per event."""
    with worker_rig(log_dir, name or ("noop" if noop else "models"),
                    STREAMS_ENGINE="noop" if noop else "models", **env) as rig:
        # Serialized before the clock starts: the load generator shares the worker's CPUs.
        events = [(f"b{i}".encode(), json.dumps({"event_id": f"b{i}", "text": text}).encode())
                  for i, text in enumerate(corpus_texts(corpus, n))]
        sent_ms: dict[bytes, int] = {}
        cpu_before = _cpu_seconds(rig.worker.pid)
        meters_before = None if noop else scrape_engine(rig.health_port)
        start = time.time()
        for key, value in events:
            sent_ms[key] = now_ms = int(time.time() * 1000)
            rig.producer.produce(BENCH_TOPIC, key=key, value=value, timestamp=now_ms)
            rig.producer.poll(0)
        rig.producer.flush(60)
        latencies = _read_by_key(rig.reader, sent_ms, 600)
        elapsed = time.time() - start
        worker_cpu = _cpu_seconds(rig.worker.pid) - cpu_before
        engine = {} if meters_before is None else engine_figures(meters_before, scrape_engine(rig.health_port))
        rss_kb = _proc_status_kb(rig.worker.pid, "VmHWM")
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {"events": n, "received": len(latencies), "events_per_s": per_second(len(latencies), elapsed),
            "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)),
            "worker_peak_rss_mb": rss_kb / 1024,
            "worker_cpu_us_per_event": worker_cpu / max(1, len(latencies)) * 1e6, **engine}


ENGINE_METERS = {"streams_engine_busy_seconds_total": "busy_s",
                 "streams_engine_batch_fill_sum": "fill_sum", "streams_engine_batch_fill_count": "passes",
                 "streams_batch_size_sum": "batch_events", "streams_batch_size_count": "batches"}


def engine_meters(text: str) -> dict[str, float]:
    """The engine's meters in a worker's /metrics text: busy seconds, and the batch fill
    histogram's sum and count (every engine's series added up)."""
    meters = dict.fromkeys(ENGINE_METERS.values(), 0.0)
    for line in text.splitlines():
        key = ENGINE_METERS.get(line.split("{", 1)[0].split(" ", 1)[0])
        if key is not None:
            meters[key] += float(line.rsplit(" ", 1)[1])
    return meters


def scrape_engine(port: int) -> dict[str, float]:
    """`engine_meters` of the worker serving /metrics on `port`, and when they were read."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return engine_meters(text) | {"at": time.monotonic()}


def engine_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Between two scrapes: the engine's duty cycle (busy seconds / wall seconds; near 1 the
    models were the bottleneck, lower the stream kept them waiting) and the mean batch fill
    of its forward passes, and the mean micro-batch the source took (NaN: none)."""
    wall = after["at"] - before["at"]
    passes = after["passes"] - before["passes"]
    batches = after["batches"] - before["batches"]
    return {"engine_duty_cycle": (after["busy_s"] - before["busy_s"]) / wall if wall > 0 else math.nan,
            "batch_fill": (after["fill_sum"] - before["fill_sum"]) / passes if passes else math.nan,
            "mean_batch": (after["batch_events"] - before["batch_events"]) / batches if batches else math.nan}


def _backlog(settings: Settings, n: int, corpus: str) -> None:
    """`n` texts of `corpus` waiting in the input topic (a worker restarted after an outage)."""
    from streams.kafka import producer

    prod = producer(settings, **{"log.connection.close": False})
    for i, text in enumerate(corpus_texts(corpus, n)):
        prod.produce(BENCH_TOPIC, key=f"b{i}".encode(), value=json.dumps({"event_id": f"b{i}", "text": text}).encode())
        prod.poll(0)
    if prod.flush(60):
        raise RuntimeError("the backlog was not acknowledged by the broker")


def bench_from_launch(n: int, log_dir: Path, name: str, command: list[str], corpus: str = "samples",
                      **env_extra: str) -> dict:
    """`command` (the worker, or the reference loop) launched on a fresh embedded broker with
    `n` texts of `corpus` already waiting: seconds from process launch to ready (models loaded
    and partitions assigned: the worker's /readyz answers 200, the reference loop prints
    "ready"), to the first and to the n-th output read back, and events/s over the whole
    (launch to n-th output). The reader is assigned the output partitions before the launch,
    so it joins no group and sees each output as soon as the broker has it."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    from streams.broker import EmbeddedBroker, free_port
    from streams.kafka import consumer, ensure_topics

    with EmbeddedBroker(free_port(), log_path=log_dir / f"bench-tansu-{name}.log") as broker:
        settings = Settings(kafka_bootstrap=broker.bootstrap)
        ensure_topics(settings)
        _backlog(settings, n, corpus)
        reader = consumer(settings, f"bench-reader-{uuid.uuid4().hex[:6]}", **READER)
        reader.assign([TopicPartition(f"{BENCH_TOPIC}.enriched", p, OFFSET_BEGINNING)
                       for p in range(settings.topic_partitions)])
        env = os.environ | {"STREAMS_KAFKA_BOOTSTRAP": broker.bootstrap,
                            "STREAMS_APP_ID": f"bench-{uuid.uuid4().hex[:6]}",
                            "STREAMS_KAFKA_SESSION_TIMEOUT_S": "6",
                            "STREAMS_HEALTH_PORT": str(free_port()), **env_extra}
        pending = {f"b{i}".encode() for i in range(n)}
        first = last = ready = None
        log_path = log_dir / f"bench-launch-{name}.log"
        with log_path.open("wb") as log:
            launched = time.monotonic()
            proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            readiness = _ReadyWatch(int(env["STREAMS_HEALTH_PORT"]), log_path)
            try:
                deadline = launched + 600
                while pending and time.monotonic() < deadline and proc.poll() is None:
                    if ready is None and readiness.ready():
                        ready = time.monotonic() - launched
                    for msg in reader.consume(min(1000, len(pending)), 0.05 if ready is None else 0.1):
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
    return {"events": n, "received": received, "ready_s": ready if ready is not None else float("inf"),
            "first_output_s": first if first is not None else float("inf"),
            "last_output_s": last if last is not None and not pending else float("inf"),
            "events_per_s": received / last if last and not pending else 0.0, "cpu_s": cpu}


class _ReadyWatch:
    """Whether a launched process says it is ready: the worker's /readyz answers 200 (its
    models are loaded and it has joined its group), or the reference loop's log has its
    "ready" line (its models are loaded and it has partitions). Checked between polls of the
    output, so each check is cheap: one local HTTP request, one read of a small log."""

    def __init__(self, health_port: int, log_path: Path):
        self.url = f"http://127.0.0.1:{health_port}/readyz"
        self.log_path = log_path

    def ready(self) -> bool:
        try:
            if any(line.strip() == "ready" for line in self.log_path.read_text(errors="replace").splitlines()):
                return True
        except OSError:
            pass
        try:
            with urllib.request.urlopen(self.url, timeout=0.2) as resp:
                return resp.status == 200
        except (OSError, ValueError):
            return False


def worker_command() -> list[str]:
    return [sys.executable, "-m", "streams", "worker", "--loglevel", "warning"]


def reference_command() -> list[str]:
    return [sys.executable, str(Path(__file__).with_name("reference.py"))]


def bench_latency(rate: float, duration: float, log_dir: Path, warmup: float = 10.0, **env: str) -> dict:
    """The worker (ready, group joined) under a steady `rate` of events/s: produce -> enriched
    latency per event, from the input record's timestamp to the enriched record read back,
    for the events sent in the `duration` seconds after `warmup` seconds of the same load
    (steady state: on CPU the first batches of each new shape are slower). `env`: the worker's
    settings (STREAMS_SOURCE=...)."""
    with worker_rig(log_dir, "latency", **env) as rig:
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
    with worker_rig(log_dir, "sustained") as rig:
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
