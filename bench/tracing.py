"""What tracing costs a worker: `bench.stream.bench_stream` (untraced) and `bench_traced`
(every event traced, OTLP gRPC) side by side, in the order given (u = untraced, t = traced),
on the configured source (`STREAMS_SOURCE`) with the real models (`noop`: the no-op engine,
where tracing's own cost shows). Prints events/s and the worker's CPU per event of each run,
then the mean of each side.

    .venv/bin/python -m bench.tracing EVENTS [ORDER, e.g. uttu] [models|noop]   (or bench/tracing.py)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

if __name__ == "__main__" and not __package__:  # python bench/tracing.py: the repository root on
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the path (for `bench`), not bench/

import numpy as np  # noqa: E402

from bench import stream as bench  # noqa: E402


def main() -> None:
    n = int(sys.argv[1])
    order = sys.argv[2] if len(sys.argv) > 2 else "uttu"
    noop = (sys.argv[3] if len(sys.argv) > 3 else "models") == "noop"
    runs: dict[str, list[dict]] = {"u": [], "t": []}
    with tempfile.TemporaryDirectory() as logs:
        for side in order:
            r = (bench.bench_traced(n, Path(logs), noop=noop) if side == "t"
                 else bench.bench_stream(n, noop=noop, log_dir=Path(logs)))
            runs[side].append(r)
            print(f"{'traced' if side == 't' else 'untraced':>8}: {r['events_per_s']:8.1f} events/s, "
                  f"worker {r['worker_cpu_us_per_event']:7.0f} µs CPU/event", flush=True)
    mean = {side: (np.mean([r["events_per_s"] for r in rs]), np.mean([r["worker_cpu_us_per_event"] for r in rs]))
            for side, rs in runs.items() if rs}
    if len(mean) == 2:
        print(f"traced/untraced {mean['t'][0] / mean['u'][0]:.3f}; tracing costs "
              f"{mean['t'][1] - mean['u'][1]:+.0f} µs of worker CPU per event")


if __name__ == "__main__":
    main()
