"""`streams bench` (`python -m bench`): where the time goes, on one machine, same texts, same models.

Every corpus-dependent run is made on two corpora: `tickets`, 1,000+ generated support tickets of
similar length (bench/corpus.py: work nobody picked to suit the engine), and `samples`, the
bundled samples repeated (lengths from one line to a paragraph). The samples' figures are the
top level of the results, the tickets' are under "tickets", with the same keys.

engine      our engine alone, batched, in the precision `auto` picks (bf16 on CPUs with native
            bf16 where the agreement with fp32 meets the bar: docs/models.md)
naive       the reference's models called once per event (batch 1): a service per request
reference   the obvious code (bench/reference.py): the NER pipeline at batch 32, MiniLM's direct
            forward pass with mean pooling, fp32
precision   the agreement of each reduced precision (bf16, int8) with fp32 on the same texts,
            recorded in the model cache for `auto` (streams/engine/precision.py)
end-to-end  the worker on the embedded broker, first produce -> last enriched record read back,
            with the engine's duty cycle and batch fill read from its /metrics
launch      the worker and the reference loop launched with 1,000 texts waiting: ready, first
            and last output
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
import time
from pathlib import Path

import numpy as np

from streams.settings import SUPPORT_TICKET_LABELS, Settings

from .chart import plot
from .stream import (BENCH_TOPIC, CORPORA, bench_from_launch, bench_latency, bench_stream, bench_traced, corpus_texts,
                     per_second, reference_command, worker_command)


def bench_engine(engine, texts, labels, batch: int) -> float:
    engine.infer(texts[:batch], labels)  # warm-up
    t = time.perf_counter()
    for i in range(0, len(texts), batch):
        engine.infer(texts[i : i + batch], labels)
    return per_second(len(texts), time.perf_counter() - t)


def agreement(full: list, other: list) -> dict:
    """How far another engine's output (bf16, int8) is from full precision's on the same texts:
    the share of equal labels, of texts with exactly the same entity spans, and the entity F1
    with full precision's spans (label, start, end) as the truth."""
    spans = lambda inference: {(e.label, e.start, e.end) for e in inference.entities}  # noqa: E731
    pairs = [(spans(a), spans(b)) for a, b in zip(full, other)]
    tp = sum(len(a & b) for a, b in pairs)
    wrong = sum(len(a ^ b) for a, b in pairs)
    return {"labels": sum(a.classification.label == b.classification.label
                          for a, b in zip(full, other)) / len(full),
            "entities_exact": sum(a == b for a, b in pairs) / len(pairs),
            "entities_f1": 2 * tp / (2 * tp + wrong) if tp or wrong else 1.0, "texts": len(full)}


def _load(settings: Settings, **options):
    from streams.engine import EncoderEngine

    return EncoderEngine.load(settings.ner_model, settings.classifier_model, cache_dir=settings.model_cache,
                              device="cpu", max_batch=settings.model_batch,
                              max_tokens=settings.max_tokens_per_pass, **options)


def _outputs(engine, texts, labels, batch: int) -> list:
    return [r for i in range(0, len(texts), batch) for r in engine.infer(texts[i : i + batch], labels)]


# Texts a recorded verdict needs at least: at 99 % a label bar allows 10 flips in 1,000 (the
# near-ties bf16 flips are ~3 in 1,000 here); a short run's figure would be luck either way.
VERDICT_TEXTS = 1000


def bench_precision(settings: Settings, texts_by_corpus: dict[str, list[str]], labels, batch: int) -> dict:
    """bf16 and int8 against fp32 on CPU, per corpus: speed and agreement. bf16's agreement on
    the generated tickets (the larger corpus) is recorded in the model cache, per model: it is
    what `STREAMS_PRECISION=auto` decides by (streams/engine/precision.py)."""
    from streams.engine import precision

    full = _load(settings, precision="fp32")
    reduced = {"int8": _load(settings, precision="fp32", quantize="int8")}
    if precision.cpu_has_fast_bf16():
        reduced["bf16"] = _load(settings, precision="bf16")
    out: dict = {}
    for name, texts in texts_by_corpus.items():
        bench_engine(full, texts[:batch], labels, batch)
        t = time.perf_counter()
        truth = _outputs(full, texts, labels, batch)
        fp32_rate = per_second(len(texts), time.perf_counter() - t)
        out[name] = {"fp32_events_per_s": fp32_rate}
        for kind, engine in reduced.items():
            bench_engine(engine, texts[:batch], labels, batch)
            t = time.perf_counter()
            got = _outputs(engine, texts, labels, batch)
            rate = per_second(len(texts), time.perf_counter() - t)
            out[name][kind] = {"events_per_s": rate, "speedup": rate / fp32_rate, "agreement": agreement(truth, got)}
    if "bf16" in reduced and "tickets" in out and out["tickets"]["bf16"]["agreement"]["texts"] >= VERDICT_TEXTS:
        a = out["tickets"]["bf16"]["agreement"]
        for model in full.models:
            precision.record(settings.model_cache, model, {
                "labels": a["labels"], "entities_f1": a["entities_f1"], "texts": a["texts"],
                "corpus": "bench.corpus tickets"})
    return out


def bench_reference(models, texts, batch_size: int) -> float:
    """The reference's models alone (no Kafka): batches of `batch_size`, or one call per text."""
    models.entities(texts[:2])
    t = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        chunk = texts[i : i + batch_size]
        models.entities(chunk)
        models.classify(chunk)
    return per_second(len(texts), time.perf_counter() - t)


def mean_run(runs: list[dict]) -> dict:
    """Several runs of one kind: the mean of each figure, the runs' events/s kept too."""
    mean = {k: float(np.mean([r[k] for r in runs])) for k, v in runs[0].items()
            if isinstance(v, (int, float))}
    mean["runs_events_per_s"] = [r["events_per_s"] for r in runs]
    return mean


PARTS = ("throughput", "launch", "latency", "shadow")
# The candidate of the shadow part: the route's encoder models with the labels renamed (the
# same descriptions), so share 100 costs a second inference of every event on the same models.
SHADOW_CANDIDATE = {"name": "relabelled", "labels": {f"{k} (v2)": v for k, v in SUPPORT_TICKET_LABELS.items()}}


def run(n_engine: int, n_stream: int, n_ceiling: int, out: Path, traced: bool = True,
        rounds: int = 3, bounds: dict | None = None, parts: tuple[str, ...] = PARTS,
        n_launch: int = 1000, latency_s: float = 60.0, corpora: tuple[str, ...] = CORPORA) -> dict:
    """All runs; the figures go to `out` (JSON) and a chart of them beside it (`out` with .png).
    `bounds` marks the chart; by default the bounds.json next to `out` (bench/bounds.json).
    `parts`: throughput (engine, naive, reference, precision, end to end after ready, ceiling),
    launch (worker and reference loop from process launch), latency (p50/p99 at half the
    capacity), shadow (end to end with a candidate on the route at share 0 and 100 against
    none). The corpus-dependent parts run on each of `corpora`; shadow on the first."""
    from streams.engine import EncoderEngine, LabelSet

    from .reference import ReferenceModels

    settings = Settings()
    engine = EncoderEngine.load(settings.ner_model, settings.classifier_model, cache_dir=settings.model_cache,
                                device=settings.device, max_batch=settings.model_batch,
                                max_tokens=settings.max_tokens_per_pass,
                                overlap_tokenization=settings.overlap_tokenization,
                                precision=settings.precision)
    labels = LabelSet.from_mapping(SUPPORT_TICKET_LABELS)
    texts = {name: corpus_texts(name, n_engine) for name in corpora}
    results = {"device": str(engine.device), "texts": n_engine, "batch": settings.model_batch,
               "cpu_count": os.cpu_count(), "ratios": {}, "corpus": "samples",
               "models": [f"{m.task}: {m.name} {m.version}" for m in engine.models]}
    by_corpus = {name: results if name == "samples" else results.setdefault(name, {"ratios": {}})
                 for name in corpora}
    out.parent.mkdir(parents=True, exist_ok=True)
    if "throughput" in parts:
        if engine.device.type == "cpu":
            checked = {name: corpus_texts(name, VERDICT_TEXTS) if name == "tickets" else t
                       for name, t in texts.items()}
            results["precision"] = bench_precision(settings, checked, labels, settings.model_batch)
        reference = ReferenceModels.built_in(settings.model_cache, SUPPORT_TICKET_LABELS)
        for name, target in by_corpus.items():
            _run_throughput(target, engine, reference, settings, texts[name], labels, n_stream, out,
                            traced and name == "samples", rounds, name)
        del reference
        _run_ceiling(results, settings, n_ceiling, out, traced, rounds)
    if "launch" in parts:
        for name, target in by_corpus.items():
            _run_launch(target, n_launch, rounds, out.parent, name)
    if "latency" in parts:
        # Half the capacity of the load it offers: a steady load comes in micro-batches of a few
        # dozen events, so the engine's rate in calls of model_batch texts, not of max_batch (on
        # the samples, whose lengths vary most, calls of 256 sorted by length run twice as fast:
        # half of that rate was 95 % of what the worker does in small batches, and the run
        # measured a queue). A forward pass: model_batch texts at that rate.
        per_pass = bench_engine(engine, texts[corpora[-1]], labels, settings.model_batch)
        pass_s = settings.model_batch / per_pass
        results["latency"] = bench_latency(per_pass / 2, latency_s, out.parent) | {
            "forward_pass_ms": pass_s * 1000, "batch_window_ms": settings.max_wait_s * 1000,
            "engine_events_per_s": per_pass}
    if "shadow" in parts:
        _run_shadow(results, by_corpus[corpora[0]], min(n_stream, 1024), rounds, out.parent, corpora[0])
    del engine
    results["bench_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["chart"] = str(out.with_suffix(".png"))
    out.write_text(json.dumps(results, indent=2))
    if bounds is None and (out.parent / "bounds.json").exists():
        bounds = json.loads((out.parent / "bounds.json").read_text())
    plot(results, out.with_suffix(".png"), bounds)
    for name in corpora:
        if name != "samples" and name in results:
            plot(results[name] | {k: results[k] for k in ("device", "cpu_count", "batch")},
                 out.with_name(f"{out.stem}-{name}.png"), bounds)
    return results


def _run_shadow(results: dict, target: dict, n: int, rounds: int, log_dir: Path, corpus: str) -> None:
    """What a route's candidate costs the live path: end to end (`bench_stream`, the route's
    records read back) with no candidate, with one at share 0 and at share 100
    (`SHADOW_CANDIDATE`), in mirrored rounds as the throughput runs; each figure the mean of
    its runs, in `results["shadow"]`; the ratios in the corpus's `target`. Bound: share 0
    within 5 % of none in events/s and in p50 latency."""
    def route(share: float | None) -> dict:
        r = {"input": BENCH_TOPIC, "labels": SUPPORT_TICKET_LABELS}
        return r if share is None else r | {"candidate": SHADOW_CANDIDATE | {"share": share}}

    kinds = {"none": None, "share_0": 0.0, "share_100": 100.0}
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for i in range(rounds):
        for kind in (list(kinds) if i % 2 == 0 else list(kinds)[::-1]):
            runs[kind].append(bench_stream(n, False, log_dir, f"shadow-{kind}-{i}", corpus=corpus,
                                           STREAMS_TOPICS=json.dumps([route(kinds[kind])])))
    shadow = results["shadow"] = {"corpus": corpus, "candidate": SHADOW_CANDIDATE["name"],
                                  **{k: mean_run(v) for k, v in runs.items()}}
    none = shadow["none"]
    for kind in ("share_0", "share_100"):
        target["ratios"][f"shadow_{kind}/none"] = shadow[kind]["events_per_s"] / none["events_per_s"]
        target["ratios"][f"latency_none/shadow_{kind}"] = none["p50_ms"] / shadow[kind]["p50_ms"]


def _run_launch(results: dict, n: int, rounds: int, log_dir: Path, corpus: str) -> None:
    """Worker and reference loop from process launch, alternated over `rounds` rounds, `n`
    texts of `corpus` waiting; each figure is the median of its runs (one slow start-up must
    not decide a ratio)."""
    ours, ref = [], []
    for i in range(rounds):
        ours.append(bench_from_launch(n, log_dir, f"worker-{corpus}-{i}", worker_command(), corpus=corpus))
        ref.append(bench_from_launch(n, log_dir, f"reference-{corpus}-{i}", reference_command(), corpus=corpus))
    for key, runs in (("from_launch", ours), ("reference_from_launch", ref)):
        results[key] = {k: float(np.median([r[k] for r in runs])) for k in runs[0]} | {
            "runs_events_per_s": [r["events_per_s"] for r in runs],
            "runs_ready_s": [r["ready_s"] for r in runs],
            "runs_first_output_s": [r["first_output_s"] for r in runs]}
    ours, ref = results["from_launch"], results["reference_from_launch"]
    results["ratios"]["from_launch/reference"] = ours["events_per_s"] / ref["events_per_s"] \
        if ref["events_per_s"] else float("inf")
    results["ratios"]["first_output_reference/ours"] = ref["first_output_s"] / ours["first_output_s"]
    results["ratios"]["ready_reference/ours"] = ref["ready_s"] / ours["ready_s"]


def _run_throughput(results: dict, engine, reference, settings: Settings, texts, labels, n_stream: int,
                    out: Path, traced: bool, rounds: int, corpus: str) -> None:
    results["naive"] = bench_reference(reference, texts, 1)
    # Engine, reference, end to end, end to end traced and end to end on the other source, over
    # `rounds` rounds; each figure is the mean of its runs. On a shared machine the same run
    # varies by 10 % from minute to minute, so every round is the mirror of the one before
    # (engine, reference, end to end, traced, other; then other, traced, ...): the two runs of
    # each ratio are always close, and a machine that slows or speeds up steadily weighs on both
    # sides of a ratio alike. End to end runs on the configured source (`end_to_end`) and on the
    # other one too (`end_to_end_<other>`): both must keep up with the models.
    other = "librdkafka" if settings.source == "faust" else "faust"
    steps = {
        "engine": lambda: bench_engine(engine, texts, labels, settings.max_batch),
        "reference": lambda: bench_reference(reference, texts, 32),
        "plain": lambda: bench_stream(n_stream, noop=False, log_dir=out.parent, name=f"models-{corpus}",
                                      corpus=corpus),
        "traced": lambda: bench_traced(n_stream, log_dir=out.parent),
        "other": lambda: bench_stream(n_stream, noop=False, log_dir=out.parent,
                                      name=f"models-{other}-{corpus}", corpus=corpus, STREAMS_SOURCE=other),
    }
    order = [step for step in steps if traced or step != "traced"]
    step_runs: dict[str, list] = {step: [] for step in steps}
    for r in range(rounds):
        for step in (order if r % 2 == 0 else order[::-1]):
            step_runs[step].append(steps[step]())
    results["engine"] = float(np.mean(step_runs["engine"]))
    results["engine_runs_events_per_s"] = step_runs["engine"]
    results["reference"] = float(np.mean(step_runs["reference"]))
    results["reference_runs_events_per_s"] = step_runs["reference"]
    results["source"] = settings.source
    results["end_to_end"] = mean_run(step_runs["plain"])
    results[f"end_to_end_{other}"] = mean_run(step_runs["other"])
    results["ratios"] |= {
        "end_to_end/engine": results["end_to_end"]["events_per_s"] / results["engine"],
        f"end_to_end_{other}/engine": results[f"end_to_end_{other}"]["events_per_s"] / results["engine"],
        "engine/naive": results["engine"] / results["naive"],
        "engine/reference": results["engine"] / results["reference"],
        # The bar: ours end to end against the reference's models alone (its loop adds
        # Kafka on top, so this is the harder comparison), and the reference loop from launch.
        "end_to_end/reference": results["end_to_end"]["events_per_s"] / results["reference"],
    }
    if traced:
        results["end_to_end_traced"] = mean_run(step_runs["traced"])
        results["ratios"]["traced/untraced"] = (results["end_to_end_traced"]["events_per_s"]
                                                / results["end_to_end"]["events_per_s"])


def _run_ceiling(results: dict, settings: Settings, n_ceiling: int, out: Path, traced: bool,
                 rounds: int) -> None:
    """The stream ceiling of both sources (docs/sources.md): what each can carry, so the best
    of `rounds` runs, the sources alternated. Another tenant's load only ever slows a run down
    (the same run ranged 10,000-16,500 events/s within minutes here); every run is kept. With
    tracing on, each configured-source ceiling run is followed by a traced no-op run: what
    tracing alone costs the worker per event (tracing_cost, below)."""
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
    if traced and "end_to_end_traced" in results:
        # traced/untraced swings 0.91-1.05 between back-to-back pairs of identical runs on this
        # shared machine (docs/benchmarks.md), wider than the 5 % it is meant to resolve. What
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
