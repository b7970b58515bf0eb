"""Latency of each source at one steady rate, in one run: `bench.stream.bench_latency` (the
worker ready, `rate` events/s for 30 s after 10 s of warm-up, real models) per source, the
worker logging at info so its log shows each batch's size and inference time.

    .venv/bin/python -m bench.latency OUT_DIR RATE [faust,librdkafka]   (or bench/latency.py)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # python bench/latency.py: the repository root on
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the path (for `bench`), not bench/

from bench import stream as bench  # noqa: E402


def main() -> None:
    out, rate = Path(sys.argv[1]), float(sys.argv[2])
    sources = sys.argv[3].split(",") if len(sys.argv) > 3 else ["faust", "librdkafka"]
    popen = subprocess.Popen

    def at_info(args, *a, **k):  # the bench starts its workers at warning
        return popen(["info" if x == "warning" else x for x in args], *a, **k)

    bench.subprocess.Popen = at_info
    for source in sources:
        (out / source).mkdir(parents=True, exist_ok=True)
        r = bench.bench_latency(rate, 30, out / source, STREAMS_SOURCE=source)
        print(f"{source}: p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, max {r['max_ms']:.0f} ms "
              f"({r['received']}/{r['sent']} back); batches in {out / source}/bench-worker-latency.log",
              flush=True)


if __name__ == "__main__":
    main()
