"""The bench's results on the terminal: the tables and lines `streams bench` prints."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

# As the service's CLI: lines are never wrapped by rich (a pipe is 80 columns to it).
console = Console(soft_wrap=True, highlight=False)


def encoder(r: dict) -> None:
    """The encoder bench's results (`encoder.run`): per corpus, a table of the runs, the launch
    table and the ratios; then the precisions' agreement, latency and what tracing costs."""
    for corpus in ("tickets", "samples"):
        sub = r if corpus == "samples" else r.get(corpus)
        if sub:
            _corpus(r, sub, corpus)
    for corpus, figures in r.get("precision", {}).items():
        for kind in ("bf16", "int8"):
            if kind in figures:
                f, a = figures[kind], figures[kind]["agreement"]
                console.print(f"{corpus}: {kind} {f['events_per_s']:.1f}/s against fp32 "
                              f"{figures['fp32_events_per_s']:.1f}/s ({f['speedup']:.2f}x); labels equal "
                              f"{a['labels']:.1%}, entity spans equal {a['entities_exact']:.1%}, entity F1 "
                              f"{a['entities_f1']:.3f} (bars for auto: labels 99 %, F1 0.98; {a['texts']} texts)")
    if "models" in r:
        console.print("models as run by the engine and the worker (auto): " + "; ".join(r["models"]))
    if "latency" in r:
        lat = r["latency"]
        console.print(f"latency at {lat['rate']:.1f} events/s (half the engine's rate in calls of "
                      f"{r.get('batch', 32)} texts, {lat.get('engine_events_per_s', float('nan')):.1f}/s) "
                      f"for {lat['duration_s']:.0f} s "
                      f"after {lat['warmup_s']:.0f} s of warm-up: "
                      f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms "
                      f"({lat['received']}/{lat['sent']} back); batch window {lat['batch_window_ms']:.0f} ms, "
                      f"one forward pass {lat['forward_pass_ms']:.0f} ms")
    if "shadow" in r:
        sh = r["shadow"]
        table = Table(title=f"{sh['corpus']}: a candidate on the route (\"{sh['candidate']}\": the same models, "
                            f"other labels), end to end (mean of {len(sh['none']['runs_events_per_s'])})")
        for col in ("run", "events/s", "p50 ms", "p99 ms", "duty cycle", "x none (events/s)"):
            table.add_column(col, justify="right" if col != "run" else "left")
        for kind, name in (("none", "no candidate"), ("share_0", "candidate, share 0"),
                           ("share_100", "candidate, share 100")):
            s = sh[kind]
            table.add_row(name, f"{s['events_per_s']:.1f}", f"{s['p50_ms']:.0f}", f"{s['p99_ms']:.0f}",
                          f"{s.get('engine_duty_cycle', float('nan')):.2f}",
                          f"{s['events_per_s'] / sh['none']['events_per_s']:.2f}")
        console.print(table)
    if "end_to_end_traced" in r:
        console.print(f"spans received over OTLP gRPC in the traced run: {r['end_to_end_traced']['spans_received']}")
    if "tracing_cost" in r:
        t = r["tracing_cost"]
        console.print(f"tracing costs the worker {t['us_per_event']:.0f} µs of CPU per event (no-op engine, "
                      f"traced minus untraced), the models {t['end_to_end_cpu_us_per_event']:.0f} µs")


def _corpus(r: dict, sub: dict, corpus: str) -> None:
    """One corpus's tables (the samples' also hold the stream ceilings) and ratios."""
    table = Table(title=f"{corpus}: streams bench on {r['device']} ({r['cpu_count']} cores), batch {r['batch']}")
    for col in ("run", "events/s", "p50 ms", "p99 ms", "peak RSS MB", "duty cycle", "batch fill"):
        table.add_column(col, justify="right" if col != "run" else "left")
    blank = ("",) * 6
    if "engine" in sub:
        table.add_row("engine", f"{sub['engine']:.1f}", *blank[1:])
    if "naive" in sub:
        table.add_row("naive (reference models, batch 1)", f"{sub['naive']:.1f}", *blank[1:])
    if "reference" in sub:
        table.add_row("reference (NER pipeline + MiniLM forward, 32)", f"{sub['reference']:.1f}", *blank[1:])
    source = {"faust": "Faust agent", "librdkafka": "librdkafka"}.get(sub.get("source", ""), "")
    for key, name in (("end_to_end", f"end-to-end, {source} source (STREAMS_SOURCE)" if source else "end-to-end"),
                      ("end_to_end_librdkafka", "end-to-end, librdkafka source"),
                      ("end_to_end_faust", "end-to-end, Faust agent source"),
                      ("stream_ceiling", "stream ceiling (no-op), librdkafka"),
                      ("stream_ceiling_faust", "stream ceiling (no-op), Faust agent"),
                      ("end_to_end_traced", "end-to-end, traced")):
        if key not in sub:
            continue
        s = sub[key]
        duty = f"{s['engine_duty_cycle']:.2f}" if "engine_duty_cycle" in s else ""
        fill = f"{s['batch_fill']:.2f}" if "batch_fill" in s else ""
        table.add_row(name, f"{s['events_per_s']:.1f}", f"{s['p50_ms']:.0f}", f"{s['p99_ms']:.0f}",
                      f"{s['worker_peak_rss_mb']:.0f}", duty, fill)
    console.print(table)
    if "from_launch" in sub:
        launch = Table(title=f"{corpus}: from process launch, {sub['from_launch']['events']:.0f} texts waiting "
                             f"(median of {len(sub['from_launch']['runs_events_per_s'])})")
        for col in ("run", "events/s, launch to last output", "launch to ready s", "launch to first output s",
                    "launch to last output s"):
            launch.add_column(col, justify="right" if col != "run" else "left")
        for key, name in (("reference_from_launch", "reference loop (consume 32, reference models)"),
                          ("from_launch", "streams worker")):
            s = sub[key]
            launch.add_row(name, f"{s['events_per_s']:.1f}", f"{s.get('ready_s', float('nan')):.1f}",
                           f"{s['first_output_s']:.1f}", f"{s['last_output_s']:.1f}")
        console.print(launch)
    for name, value in sub["ratios"].items():
        console.print(f"{corpus}: {name}: {value:.2f}")


def llm(r: dict) -> None:
    """The LLM bench's results (`llm.run`): a table of the runs and the ratios."""
    table = Table(title=f"streams bench --engine llm: {r['model']} on {r['device']} ({r['dtype']}, "
                        f"{r.get('card', str(r['cpu_count']) + ' cores')}), {r['texts']} tickets, "
                        f"up to {r['llm_batch']} rows per step, prompt prefix {r['prompt_prefix_tokens']} tokens")
    for col in ("run", "events/s", "output tokens/s", "note"):
        table.add_column(col, justify="left" if col in ("run", "note") else "right")
    table.add_row("LLM engine, batched", f"{r['batched']['events_per_s']:.3f}",
                  f"{r['batched']['output_tokens_per_s']:.1f}", f"{r['batched']['failed']} dead-lettered")
    table.add_row("naive (one per call)", f"{r['naive']['events_per_s']:.3f}",
                  f"{r['naive']['output_tokens_per_s']:.1f}", "")
    g = r["grammar"]
    table.add_row("grammar overhead", "", "", f"{g['overhead_pct']:+.1f} % per token "
                  f"({g['constrained_s_per_token'] * 1000:.0f} vs {g['unconstrained_s_per_token'] * 1000:.0f} ms); "
                  f"xgrammar's share of the constrained runs {g['grammar_share_pct']:.1f} %")
    if "end_to_end" in r:
        e = r["end_to_end"]
        table.add_row("end-to-end (broker, worker)", f"{e['events_per_s']:.3f}", "",
                      f"{e['enriched']} enriched + {e['dead_lettered']} dead-lettered of {e['events']}")
    console.print(table)
    for name, value in r["ratios"].items():
        console.print(f"{name}: {value:.2f}")
