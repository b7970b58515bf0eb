"""Stream ceiling of both sources on the same machine in one run: a worker with the no-op
engine (`STREAMS_ENGINE=noop`) per source, fed N small events on a fresh embedded broker;
events/s and the worker's CPU µs per event. Reuses `streams.bench.bench_stream`.

    .venv/bin/python bench/sources.py 20000 [runs]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from streams.bench import bench_stream


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    log_dir = Path(tempfile.mkdtemp(prefix="bench-sources-"))
    results: dict[str, list[dict]] = {"librdkafka": [], "faust": []}
    for _ in range(runs):
        for source in results:
            r = bench_stream(n, noop=True, log_dir=log_dir, name=f"ceiling-{source}", STREAMS_SOURCE=source)
            results[source].append(r)
            print(f"{source:>10}: {r['events_per_s']:8.0f} events/s, {r['worker_cpu_us_per_event']:6.1f} "
                  f"µs CPU/event, p50 {r['p50_ms']:.0f} ms, received {r['received']}/{n}", flush=True)
    print(json.dumps({s: [{k: round(v, 1) for k, v in r.items() if isinstance(v, (int, float))} for r in rs]
                      for s, rs in results.items()}))


if __name__ == "__main__":
    main()
