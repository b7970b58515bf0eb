"""Stream ceiling of both sources on the same machine in one run: a worker with the no-op
engine (`STREAMS_ENGINE=noop`) per source, fed N small events on a fresh embedded broker;
events/s and the worker's CPU µs per event. Reuses `bench.stream.bench_stream`.

    .venv/bin/python -m bench.sources 20000 [runs]     (or python bench/sources.py ...)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__" and not __package__:  # python bench/sources.py: the repository root on
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the path (for `bench`), not bench/

from bench.stream import bench_stream  # noqa: E402


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
