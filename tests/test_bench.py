"""`streams bench` (bench/): the bound check, and the stream harness it times (no-op engine, real
broker); the service imports nothing of it.

The figures themselves come from `make bench`; these tests make sure the harness counts every
event, reads latency from the records, and that `--check` fails below a bound."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import chart, encoder, stream
from bench.bounds import check

BOUNDS = {"ratios": {"end_to_end/engine": 0.90, "engine/naive": 1.3, "traced/untraced": 0.95},
          "stream_ceiling_events_per_s": 10000}


def results(**ratios) -> dict:
    base = {"end_to_end/engine": 0.95, "engine/naive": 2.0, "traced/untraced": 0.99}
    return {"ratios": base | ratios, "stream_ceiling": {"events_per_s": 12000.0}}


def test_check_passes_at_or_above_every_bound():
    assert check(results(), BOUNDS) == []
    assert check(results(**{"end_to_end/engine": 0.90}), BOUNDS) == []  # the bound itself


def test_check_names_each_ratio_below_its_bound():
    failures = check(results(**{"end_to_end/engine": 0.87, "traced/untraced": 0.94}), BOUNDS)
    assert failures == ["end_to_end/engine = 0.87 < 0.9", "traced/untraced = 0.94 < 0.95"]


def test_check_holds_the_other_source_to_the_same_end_to_end_bound():
    """`make bench` runs end to end on both sources; the one not configured has its own ratio."""
    both = BOUNDS | {"ratios": BOUNDS["ratios"] | {"end_to_end_librdkafka/engine": 0.90}}
    assert check(results(**{"end_to_end_librdkafka/engine": 0.93}), both) == []
    assert check(results(**{"end_to_end_librdkafka/engine": 0.80}), both) == [
        "end_to_end_librdkafka/engine = 0.80 < 0.9"]


def test_check_flags_a_low_stream_ceiling():
    low = results() | {"stream_ceiling": {"events_per_s": 7636.0}}
    assert check(low, BOUNDS) == ["stream ceiling 7636/s < 10000/s"]


def test_check_flags_a_low_faust_agent_ceiling_against_its_own_bound():
    both = BOUNDS | {"stream_ceiling_faust_events_per_s": 6000}
    ok = results() | {"stream_ceiling_faust": {"events_per_s": 6000.0}}
    assert check(ok, both) == []
    low = results() | {"stream_ceiling_faust": {"events_per_s": 5200.0}}
    assert check(low, both) == ["stream ceiling (Faust agent) 5200/s < 6000/s"]


def test_mean_run_keeps_each_run():
    mean = encoder.mean_run([{"events_per_s": 90.0, "p50_ms": 10.0}, {"events_per_s": 100.0, "p50_ms": 20.0}])
    assert mean == {"events_per_s": 95.0, "p50_ms": 15.0, "runs_events_per_s": [90.0, 100.0]}


@pytest.mark.integration
def test_stream_harness_counts_every_event(tmp_path):
    """A worker subprocess with the no-op engine on a fresh embedded broker: all events come
    back enriched, with latencies measured from the input records' timestamps."""
    r = stream.bench_stream(600, noop=True, log_dir=tmp_path)
    assert r["received"] == r["events"] == 600
    assert r["events_per_s"] > 0 and 0 <= r["p50_ms"] <= r["p99_ms"] < 60_000
    assert r["worker_peak_rss_mb"] > 50 and r["worker_cpu_us_per_event"] > 0


def test_tracing_cost_is_the_traced_no_op_runs_cpu_over_the_models_cpu():
    """The no-op runs of 2026-12-02 (agent: 97/113 µs untraced, 462/386 traced) against the
    models' ~31 ms: ~1 % of a traced event's CPU is tracing. A tracing 20x as costly fails."""
    cost = encoder.tracing_cost([97.0, 113.0], [462.0, 386.0], 31_000.0)
    assert cost["us_per_event"] == pytest.approx(319.0)
    assert cost["untraced/traced_cpu"] == pytest.approx(31_000 / 31_319)
    expensive = encoder.tracing_cost([97.0, 113.0], [6_462.0, 6_386.0], 31_000.0)
    assert check({"ratios": {"untraced/traced_cpu": expensive["untraced/traced_cpu"]}},
                       {"ratios": {"untraced/traced_cpu": 0.95}}) == ["untraced/traced_cpu = 0.83 < 0.95"]
    # Noise that makes the traced no-op runs cheaper counts as no cost, not as a gain.
    assert encoder.tracing_cost([120.0], [110.0], 31_000.0)["untraced/traced_cpu"] == 1.0


@pytest.mark.integration
def test_traced_harness_receives_spans_over_otlp(tmp_path):
    r = stream.bench_traced(200, log_dir=tmp_path, noop=True)
    assert r["received"] == 200
    assert r["spans_received"] >= 200  # at least one span per event reached the receiver


# The figures measured in docs/benchmarks.md (commit de4fc2f), shaped as `bench.encoder.run` writes them.
MEASURED = {
    "device": "cpu", "cpu_count": 2, "batch": 32, "engine": 80.4, "naive": 38.7, "reference": 46.6,
    "engine_runs_events_per_s": [88.4, 79.3, 73.6], "int8": {"events_per_s": 141.4},
    "end_to_end": {"events_per_s": 80.5, "p50_ms": 14568.0, "p99_ms": 25527.0,
                   "runs_events_per_s": [76.0, 78.8, 86.6]},
    "end_to_end_traced": {"events_per_s": 76.8, "p50_ms": 14973.0, "p99_ms": 26869.0,
                          "runs_events_per_s": [74.6, 70.0, 85.7]},
    "stream_ceiling": {"events_per_s": 16621.0, "p50_ms": 652.0, "p90_ms": 800.0, "p99_ms": 934.0},
    "ratios": {"end_to_end/engine": 1.00, "engine/naive": 2.08, "engine/reference": 1.73,
               "traced/untraced": 0.954},
}


def test_plot_renders_a_png_from_a_results_dict(tmp_path):
    """The chart is drawn from the results dict alone (no bench run): a real PNG of the size
    asked for, and one without bounds or optional runs still renders."""
    from PIL import Image

    path = chart.plot(MEASURED, tmp_path / "results.png", BOUNDS | {"ratios": BOUNDS["ratios"]
                                                                    | {"engine/reference": 1.0}})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.size == (1170, 540)  # 13 x 6 inches at 90 dpi
        assert len(set(image.convert("RGB").get_flattened_data())) > 20  # bars, text and marks, not a blank canvas
    minimal = {k: MEASURED[k] for k in ("device", "engine", "naive", "reference", "ratios")}
    assert chart.plot(minimal, tmp_path / "minimal.png").stat().st_size > 5000


def test_bound_marks_sit_where_the_bound_asks():
    """engine/naive >= 1.3 asks the engine bar to reach 1.3 x naive's events/s."""
    assert chart.RATIO_RUNS["engine/naive"] == ("engine", "naive")
    assert 1.3 * chart.events_per_s(MEASURED, "naive") == pytest.approx(50.31)
    assert chart.events_per_s(MEASURED, "end_to_end") == 80.5


def test_check_flags_a_slow_start_and_a_high_p99():
    """The launch bounds (ours / reference from launch, first output) and the half-capacity
    latency bound (p99 <= batch window + N forward passes) each fail on their own."""
    bounds = {"ratios": {"from_launch/reference": 1.2, "first_output_reference/ours": 1.0},
              "latency_p99_forward_passes": 3}
    launch = {"events": 1000, "received": 1000}
    ok = {"ratios": {"from_launch/reference": 1.25, "first_output_reference/ours": 1.1},
          "from_launch": launch, "reference_from_launch": launch,
          "latency": {"p99_ms": 2000.0, "batch_window_ms": 200.0, "forward_pass_ms": 900.0,
                      "sent": 100, "received": 100}}
    assert check(ok, bounds) == []
    slow = ok | {"ratios": {"from_launch/reference": 1.1, "first_output_reference/ours": 0.9}}
    assert check(slow, bounds) == ["from_launch/reference = 1.10 < 1.2",
                                         "first_output_reference/ours = 0.90 < 1.0"]
    late = ok | {"latency": ok["latency"] | {"p99_ms": 3000.0, "received": 99}}
    assert check(late, bounds) == [
        "latency p99 3000 ms > batch window + 3 forward passes = 2900 ms",
        "latency run: 99 of 100 events came back"]
    lost = ok | {"from_launch": {"events": 1000, "received": 998}}
    assert check(lost, bounds) == ["from_launch: 998 of 1000 events came back"]


def test_the_service_imports_nothing_of_the_bench():
    """The bench's dependencies are its own extra (matplotlib for the chart, grpcio and
    opentelemetry-proto for the OTLP receiver): the service's modules load without them."""
    code = ("import sys, streams.cli, streams.app, streams.pipeline; "
            "print(sorted({'matplotlib', 'bench', 'opentelemetry.proto', 'grpc'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


def test_streams_bench_is_the_bench_cli(tmp_path):
    """`streams bench` hands its arguments to bench/cli.py: the same options as `python -m bench`,
    and an unknown part is refused before anything runs."""
    from streams.settings import REPO_ROOT

    for command in ([sys.executable, "-m", "streams", "bench", "--help"],
                    [sys.executable, "-m", "bench", "--help"]):
        out = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "--ceiling-events" in out.stdout and "--engine" in out.stdout
    refused = subprocess.run([sys.executable, "-m", "streams", "bench", "--only", "nothing",
                              "--out", str(tmp_path / "r.json")], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path, env=os.environ | {"STREAMS_ALLOCATOR": "system"})
    assert refused.returncode == 2 and "--only 'nothing'" in refused.stdout, refused.stdout + refused.stderr


def test_check_holds_the_end_to_end_runs_engine_duty_cycle_to_its_bound():
    bounds = {"engine_duty_cycle": 0.9}
    assert check({"end_to_end": {"engine_duty_cycle": 0.93}}, bounds) == []
    assert check({"end_to_end": {"engine_duty_cycle": 0.9}}, bounds) == []  # the bound itself
    assert check({"end_to_end": {"engine_duty_cycle": 0.62}}, bounds) == [
        "end_to_end engine_duty_cycle = 0.62 < 0.9"]
    # Not measured (the worker's /metrics said nothing) fails rather than passes.
    assert check({"end_to_end": {"engine_duty_cycle": float("nan")}}, bounds) == [
        "end_to_end engine_duty_cycle = nan < 0.9"]
    assert check({"end_to_end": {"events_per_s": 80.0}}, bounds) == [
        "end_to_end engine_duty_cycle = nan < 0.9"]
    assert check({"ratios": {}}, bounds) == []  # no end-to-end run (--only launch): nothing to check
    assert check({"end_to_end": {"engine_duty_cycle": 0.5}}, {}) == []  # no bound asked
    assert json.loads((Path(stream.__file__).with_name("bounds.json")).read_text())["engine_duty_cycle"] == 0.9


def test_engine_figures_come_from_the_workers_metrics_text():
    """The names `bench_stream` reads are the ones a worker's /metrics exports: read from the
    Prometheus text of a Telemetry whose inference thread did 3 passes in a known busy time."""
    from streams.engine.thread import InferenceThread
    from streams.telemetry import Telemetry

    telemetry, runner = Telemetry.create(service_name="bench-test"), InferenceThread("bench-fill")
    telemetry.metrics.watch_engine(runner)
    before = stream.engine_meters(telemetry.prometheus_text()[0].decode()) | {"at": 0.0}
    assert before == {"busy_s": 0.0, "fill_sum": 0.0, "passes": 0.0, "batch_events": 0.0, "batches": 0.0,
                      "at": 0.0}
    runner.infer(lambda: [runner.batch_filled(rows, 8, "encoder") for rows in (8, 8, 2)])
    runner.infer(runner.batch_filled, 1, 2, "llm")  # every engine's series count
    after = stream.engine_meters(telemetry.prometheus_text()[0].decode())
    assert after["busy_s"] == pytest.approx(runner.busy_seconds()) and after["busy_s"] > 0
    assert (after["fill_sum"], after["passes"]) == (2.75, 4.0)
    figures = stream.engine_figures(
        {"busy_s": 1.0, "fill_sum": 2.0, "passes": 4.0, "batch_events": 100.0, "batches": 2.0, "at": 10.0},
        {"busy_s": 10.0, "fill_sum": 5.0, "passes": 8.0, "batch_events": 612.0, "batches": 4.0, "at": 20.0})
    assert figures == {"engine_duty_cycle": 0.9, "batch_fill": 0.75, "mean_batch": 256.0}
    idle = stream.engine_figures(before, before | {"at": 5.0})
    assert idle["engine_duty_cycle"] == 0.0 and math.isnan(idle["batch_fill"])  # no pass: no fill
    telemetry.shutdown()


def test_report_prints_each_corpus_with_its_duty_cycle(capsys):
    from bench import report

    run = {"events_per_s": 50.0, "p50_ms": 10.0, "p99_ms": 20.0, "worker_peak_rss_mb": 900.0,
           "engine_duty_cycle": 0.934, "batch_fill": 0.81}
    report.encoder({"device": "cpu", "cpu_count": 2, "batch": 32, "engine": 80.0,
                    "ratios": {"end_to_end/engine": 0.9}, "end_to_end": run,
                    "tickets": {"engine": 60.0, "ratios": {"end_to_end/engine": 0.95},
                                "end_to_end": run | {"engine_duty_cycle": 0.5}}})
    out = capsys.readouterr().out
    assert out.index("tickets: streams bench") < out.index("samples: streams bench")
    assert "0.93" in out and "0.50" in out and "0.81" in out
    assert "tickets: end_to_end/engine: 0.95" in out and "samples: end_to_end/engine: 0.90" in out


def test_check_holds_every_corpus_to_the_bounds():
    bounds = {"ratios": {"from_launch/reference": 1.3}}
    ok = {"ratios": {"from_launch/reference": 1.4}}
    assert check(ok | {"tickets": ok}, bounds) == []
    assert check(ok | {"tickets": {"ratios": {"from_launch/reference": 1.1}}}, bounds) == [
        "tickets: from_launch/reference = 1.10 < 1.3"]


def test_the_generated_tickets_are_realistic_deterministic_and_all_different():
    from bench import corpus

    tickets = corpus.tickets(1200)
    assert [t.text for t in tickets[:50]] == corpus.texts(50)  # the same for the same seed
    assert corpus.texts(50, seed=1) != corpus.texts(50)
    assert len({t.text for t in tickets}) == 1200
    assert all(150 <= len(t.text) <= 340 for t in tickets)
    assert {t.topic for t in tickets} == set(corpus.BODIES)
    for t in tickets:  # every recorded span is the personal data written there
        for label, start, end in t.pii:
            assert t.text[start:end].strip() == t.text[start:end] != ""
    kinds = {label for t in tickets for label, _, _ in t.pii}
    assert {"GIVEN_NAME", "SURNAME", "EMAIL", "PHONE", "STREET_NAME", "CITY", "ZIP_CODE"} <= kinds
    with_pii = sum(bool(t.pii) for t in tickets) / len(tickets)
    assert with_pii > 0.8  # most support tickets carry a name or a contact
