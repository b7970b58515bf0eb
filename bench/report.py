"""The bench's results on the terminal: the tables and lines `streams bench` prints."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

# As the service's CLI: lines are never wrapped by rich (a pipe is 80 columns to it).
console = Console(soft_wrap=True, highlight=False)


def encoder(r: dict) -> None:
    """The encoder bench's results (`encoder.run`): tables of the runs, the ratios, int8's
    agreement, what tracing costs."""
    table = Table(title=f"streams bench on {r['device']} ({r['cpu_count']} cores), batch {r['batch']}")
    for col in ("run", "events/s", "p50 ms", "p99 ms", "peak RSS MB"):
        table.add_column(col, justify="right" if col != "run" else "left")
    if "engine" in r:
        table.add_row("engine", f"{r['engine']:.1f}", "", "", "")
    if "naive" in r:
        table.add_row("naive (batch 1)", f"{r['naive']:.1f}", "", "", "")
        table.add_row("reference (pipelines, 32)", f"{r['reference']:.1f}", "", "", "")
    if "int8" in r:
        table.add_row("engine, int8 (opt-in, CPU)", f"{r['int8']['events_per_s']:.1f}", "", "", "")
    source = {"faust": "Faust agent", "librdkafka": "librdkafka"}.get(r.get("source", ""), "")
    for key, name in (("end_to_end", f"end-to-end, {source} source (STREAMS_SOURCE)" if source else "end-to-end"),
                      ("end_to_end_librdkafka", "end-to-end, librdkafka source"),
                      ("end_to_end_faust", "end-to-end, Faust agent source"),
                      ("stream_ceiling", "stream ceiling (no-op), librdkafka"),
                      ("stream_ceiling_faust", "stream ceiling (no-op), Faust agent"),
                      ("end_to_end_traced", "end-to-end, traced")):
        if key not in r:
            continue
        s = r[key]
        table.add_row(name, f"{s['events_per_s']:.1f}", f"{s['p50_ms']:.0f}", f"{s['p99_ms']:.0f}",
                      f"{s['worker_peak_rss_mb']:.0f}")
    console.print(table)
    if "from_launch" in r:
        launch = Table(title=f"from process launch, {r['from_launch']['events']:.0f} tickets waiting "
                             f"(median of {len(r['from_launch']['runs_events_per_s'])})")
        for col in ("run", "events/s, launch to last output", "launch to first output s",
                    "launch to last output s"):
            launch.add_column(col, justify="right" if col != "run" else "left")
        for key, name in (("reference_from_launch", "reference loop (consume 32, pipelines 32)"),
                          ("from_launch", "streams worker")):
            s = r[key]
            launch.add_row(name, f"{s['events_per_s']:.1f}", f"{s['first_output_s']:.1f}",
                           f"{s['last_output_s']:.1f}")
        console.print(launch)
    if "latency" in r:
        lat = r["latency"]
        console.print(f"latency at {lat['rate']:.1f} events/s (half the engine's rate) for {lat['duration_s']:.0f} s "
                      f"after {lat['warmup_s']:.0f} s of warm-up: "
                      f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms "
                      f"({lat['received']}/{lat['sent']} back); batch window {lat['batch_window_ms']:.0f} ms, "
                      f"one forward pass {lat['forward_pass_ms']:.0f} ms")
    for name, value in r["ratios"].items():
        console.print(f"{name}: {value:.2f}")
    if "int8" in r:
        a = r["int8"]["agreement"]
        console.print(f"int8 vs full precision: {r['int8']['events_per_s'] / r['engine']:.2f}x the speed; "
                      f"labels agree on {a['labels']:.1%} of texts, entity spans on {a['entities_exact']:.1%} "
                      f"(entity F1 {a['entities_f1']:.3f})")
    if "end_to_end_traced" in r:
        console.print(f"spans received over OTLP gRPC in the traced run: {r['end_to_end_traced']['spans_received']}")
    if "tracing_cost" in r:
        t = r["tracing_cost"]
        console.print(f"tracing costs the worker {t['us_per_event']:.0f} µs of CPU per event (no-op engine, "
                      f"traced minus untraced), the models {t['end_to_end_cpu_us_per_event']:.0f} µs")


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
