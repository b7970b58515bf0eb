"""The bench's command line: `python -m bench [OPTIONS]` in a checkout, or `streams bench
[OPTIONS]` (the service's thin entry point, which imports this module only when run).

The figures need the bench extra (matplotlib for the chart, grpcio and opentelemetry-proto
for the traced runs' OTLP receiver): `pip install -e '.[bench]'` (`make setup` installs it)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import typer

from .report import console

app = typer.Typer(add_completion=False)

# module -> the distribution of the bench extra (pyproject.toml) that brings it
EXTRA = {"matplotlib": "matplotlib", "grpc": "grpcio", "opentelemetry.proto": "opentelemetry-proto"}


def missing_extra() -> list[str]:
    """The bench extra's distributions whose modules cannot be imported here."""
    def found(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            return False

    return [dist for module, dist in EXTRA.items() if not found(module)]


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@app.command()
def bench(
    texts: int = typer.Option(512, help="texts for the engine/naive/reference runs"),
    events: int = typer.Option(2048, help="events for the end-to-end run"),
    ceiling_events: int = typer.Option(20000, help="events for the no-op stream-ceiling run"),
    out: Path = typer.Option(Path("bench/results.json"), help="where the figures are written"),
    bounds: Path = typer.Option(Path("bench/bounds.json"), help="ratio bounds for --check"),
    check: bool = typer.Option(False, "--check", help="exit 1 when a ratio is below its bound"),
    duration: float = typer.Option(0, help="instead: a sustained run of this many seconds, "
                                           "reporting worker RSS growth after warm-up"),
    rate: float = typer.Option(30.0, help="events/s offered during --duration"),
    rounds: int = typer.Option(3, help="rounds of engine, end-to-end, traced and ceiling runs, alternated (each round the mirror of the one before); each figure is the mean of its runs, a ceiling the best"),
    traced: bool = typer.Option(True, "--traced/--no-traced",
                                help="also run end-to-end with tracing on (OTLP gRPC) and compare"),
    engine: str = typer.Option("encoder", help="encoder (NER + classifier) or llm (the LLM engine "
                                               "on the support-ticket samples, docs/llm.md)"),
    llm_texts: int = typer.Option(32, help="--engine llm: texts for the batched, naive, grammar "
                                          "and end-to-end runs"),
    llm_naive: int = typer.Option(0, help="--engine llm: texts for the one-per-call run; 0: the "
                                          "same texts as the batched run (a fair ratio: a pass "
                                          "lasts as long as its longest output)"),
    only: str = typer.Option("throughput,launch,latency,shadow", help="which parts: throughput (engine, "
                             "reference, end to end after ready, ceiling), launch (worker and "
                             "reference loop from process launch), latency (at half the capacity), shadow "
                             "(end to end with a candidate on the route at share 0 and 100)"),
    launch_events: int = typer.Option(1000, help="tickets waiting when the worker / reference loop is launched"),
    latency_s: float = typer.Option(60.0, help="seconds of the half-capacity latency run"),
    corpora: str = typer.Option("tickets,samples", help="the corpora of the engine, reference, end-to-end "
                                "and launch runs: tickets (generated, bench/corpus.py), samples (bundled)"),
) -> None:
    """Benchmark engine, naive, reference, end-to-end and stream ceiling; print a table."""
    missing = missing_extra()
    if missing:
        _fail(f"the bench needs its extra, {', '.join(missing)} missing here: "
              "pip install -e '.\\[bench]' in the checkout (make setup installs it)")
    if engine == "llm":
        _bench_llm(llm_texts, llm_naive or llm_texts, out.with_name("results-llm.json"), bounds, check)
        return
    if engine != "encoder":
        _fail(f"--engine {engine!r}: use encoder or llm")

    from . import encoder, report, stream
    from .bounds import check as below_bounds

    if duration:
        r = stream.bench_sustained(duration, rate, out.parent, warmup=min(60.0, duration / 5))
        out.with_name("sustained.json").write_text(json.dumps(r, indent=2))
        console.print(f"sustained {duration:.0f}s at {rate:.0f} events/s: sent {r['sent']}, "
                      f"received {r['received']}; worker RSS {r['rss_after_warmup_mb']:.0f} MB after "
                      f"warm-up -> {r['rss_end_mb']:.0f} MB at the end (max {r['rss_max_mb']:.0f} MB), "
                      f"growth {r['rss_growth_pct']:+.1f} %")
        if check and r["rss_growth_pct"] >= 5:
            raise typer.Exit(1)
        return

    parts = tuple(p.strip() for p in only.split(",") if p.strip())
    if not parts or set(parts) - set(encoder.PARTS):
        _fail(f"--only {only!r}: a comma-separated list of {', '.join(encoder.PARTS)}")
    names = tuple(c.strip() for c in corpora.split(",") if c.strip())
    if not names or set(names) - set(stream.CORPORA):
        _fail(f"--corpora {corpora!r}: a comma-separated list of {', '.join(stream.CORPORA)}")
    r = encoder.run(texts, events, ceiling_events, out, traced=traced, rounds=rounds, parts=parts,
                    n_launch=launch_events, latency_s=latency_s, corpora=names)
    report.encoder(r)
    console.print(f"written to {out}")
    if check:
        failures = below_bounds(r, json.loads(bounds.read_text()))
        for f in failures:
            console.print(f"[red]below bound:[/] {f}")
        if failures:
            raise typer.Exit(1)


def _bench_llm(n_texts: int, n_naive: int, out: Path, bounds: Path, check: bool) -> None:
    from . import llm as bl, report

    r = bl.run(n_texts, n_naive, n_texts, out)
    report.llm(r)
    console.print(f"written to {out}")
    if check:
        failures = bl.check(r, json.loads(bounds.read_text()))
        for f in failures:
            console.print(f"[red]below bound:[/] {f}")
        if failures:
            raise typer.Exit(1)


def main(args: list[str] | None = None, prog_name: str = "python -m bench") -> None:
    """Run the command on `args` (default: the process's), then exit with its status."""
    typer.main.get_command(app)(args=args, prog_name=prog_name)
