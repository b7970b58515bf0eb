"""`streams bench`: the bound check, and the stream harness it times (no-op engine, real broker).

The figures themselves come from `make bench`; these tests make sure the harness counts every
event, reads latency from the records, and that `--check` fails below a bound."""

from __future__ import annotations

import pytest

from streams import bench

BOUNDS = {"ratios": {"end_to_end/engine": 0.90, "engine/naive": 1.3, "traced/untraced": 0.95},
          "stream_ceiling_events_per_s": 10000}


def results(**ratios) -> dict:
    base = {"end_to_end/engine": 0.95, "engine/naive": 2.0, "traced/untraced": 0.99}
    return {"ratios": base | ratios, "stream_ceiling": {"events_per_s": 12000.0}}


def test_check_passes_at_or_above_every_bound():
    assert bench.check(results(), BOUNDS) == []
    assert bench.check(results(**{"end_to_end/engine": 0.90}), BOUNDS) == []  # the bound itself


def test_check_names_each_ratio_below_its_bound():
    failures = bench.check(results(**{"end_to_end/engine": 0.87, "traced/untraced": 0.94}), BOUNDS)
    assert failures == ["end_to_end/engine = 0.87 < 0.9", "traced/untraced = 0.94 < 0.95"]


def test_check_flags_a_low_stream_ceiling():
    low = results() | {"stream_ceiling": {"events_per_s": 7636.0}}
    assert bench.check(low, BOUNDS) == ["stream ceiling 7636/s < 10000/s"]


def test_mean_run_keeps_each_run():
    mean = bench._mean_run([{"events_per_s": 90.0, "p50_ms": 10.0}, {"events_per_s": 100.0, "p50_ms": 20.0}])
    assert mean == {"events_per_s": 95.0, "p50_ms": 15.0, "runs_events_per_s": [90.0, 100.0]}


@pytest.mark.integration
def test_stream_harness_counts_every_event(tmp_path):
    """A worker subprocess with the no-op engine on a fresh embedded broker: all events come
    back enriched, with latencies measured from the input records' timestamps."""
    r = bench.bench_stream(600, noop=True, log_dir=tmp_path)
    assert r["received"] == r["events"] == 600
    assert r["events_per_s"] > 0 and 0 <= r["p50_ms"] <= r["p99_ms"] < 60_000
    assert r["worker_peak_rss_mb"] > 50 and r["worker_cpu_us_per_event"] > 0


@pytest.mark.integration
def test_traced_harness_receives_spans_over_otlp(tmp_path):
    r = bench.bench_traced(200, log_dir=tmp_path, noop=True)
    assert r["received"] == 200
    assert r["spans_received"] >= 200  # at least one span per event reached the receiver
