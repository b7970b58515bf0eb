"""The bench's figures as a PNG (`bench/results.png` beside `results.json`): events/s per run,
each ratio's bound marked on its run's bar, and the stream runs' latency percentiles.
matplotlib (the bench extra) is imported only when a chart is drawn."""

from __future__ import annotations

from pathlib import Path

from .bounds import ceiling_bounds


# Which run each ratio compares with which: the chart marks, on the numerator's bar, the
# events/s the bound asks of it (bound x the denominator's figure).
RUNS = [("naive", "naive (batch 1)"), ("reference", "reference (pipelines, 32)"),
         ("engine", "engine"), ("int8", "engine, int8 (opt-in, CPU)"), ("end_to_end", "end-to-end"),
         ("end_to_end_librdkafka", "end-to-end, librdkafka source"),
         ("end_to_end_faust", "end-to-end, Faust agent source"),
         ("end_to_end_traced", "end-to-end, traced"), ("stream_ceiling", "stream ceiling (no-op), librdkafka"),
         ("stream_ceiling_faust", "stream ceiling (no-op), Faust agent"),
         ("from_launch", "end-to-end from launch"),
         ("reference_from_launch", "reference loop from launch"),
         ("latency", "at half capacity")]
RATIO_RUNS = {"end_to_end/engine": ("end_to_end", "engine"),
               "end_to_end_librdkafka/engine": ("end_to_end_librdkafka", "engine"),
               "end_to_end_faust/engine": ("end_to_end_faust", "engine"), "engine/naive": ("engine", "naive"),
               "engine/reference": ("engine", "reference"),
               "traced/untraced": ("end_to_end_traced", "end_to_end"),
               "from_launch/reference": ("from_launch", "reference_from_launch")}


def events_per_s(results: dict, key: str) -> float | None:
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
    runs = [(key, name, events_per_s(results, key)) for key, name in RUNS
            if events_per_s(results, key) is not None]
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
        num, den = RATIO_RUNS.get(name, (None, None))
        low = bounds.get("ratios", {}).get(name)
        notes.setdefault(num, []).append(f"{name} {measured:.2f}" + (f" (bound {low})" if low else ""))
        if low and num in rows and events_per_s(results, den) is not None:
            marks.append((rows[num], low * events_per_s(results, den)))
    for key, floor in ceiling_bounds(bounds):
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
    if runs:  # a bench of some parts only (--only shadow) may have no run of this chart
        left.set_xlim(right=max(v for *_, v in runs) * 4)

    stream = [(name, results[key]) for key, name in RUNS
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
