"""The encoder bench's results against `bench/bounds.json` (`--check`): each failure as one line."""

from __future__ import annotations


CORPUS_KEYS = ("tickets",)  # results of the generated corpus, nested (bench/encoder.py)


def check(results: dict, bounds: dict) -> list[str]:
    """Every corpus's failures: the samples' (the top level), then each nested corpus's,
    prefixed with its name. A lead on one corpus only is not a lead."""
    failures = _check(results, bounds)
    for corpus in CORPUS_KEYS:
        if isinstance(results.get(corpus), dict):
            failures += [f"{corpus}: {f}" for f in _check(results[corpus], bounds)]
    return failures


def _check(results: dict, bounds: dict) -> list[str]:
    failures = []
    for name, low in bounds.get("ratios", {}).items():
        if name in results.get("ratios", {}) and results["ratios"][name] < low:
            failures.append(f"{name} = {results['ratios'][name]:.2f} < {low}")
    for key, floor in ceiling_bounds(bounds):
        if key in results and results[key]["events_per_s"] < floor:
            source = " (Faust agent)" if key == "stream_ceiling_faust" else ""
            failures.append(f"stream ceiling{source} {results[key]['events_per_s']:.0f}/s < {floor}/s")
    passes = bounds.get("latency_p99_forward_passes")
    if passes and "latency" in results:
        lat = results["latency"]
        limit = lat["batch_window_ms"] + passes * lat["forward_pass_ms"]
        if not lat["p99_ms"] <= limit:
            failures.append(f"latency p99 {lat['p99_ms']:.0f} ms > batch window + {passes} forward "
                            f"passes = {limit:.0f} ms")
        if lat["received"] < lat["sent"]:
            failures.append(f"latency run: {lat['received']} of {lat['sent']} events came back")
    duty = bounds.get("engine_duty_cycle")
    if duty is not None and "end_to_end" in results:
        # Missing or NaN (the worker's /metrics could not say) fails too: `not ... >=`.
        measured = results["end_to_end"].get("engine_duty_cycle", float("nan"))
        if not measured >= duty:
            failures.append(f"end_to_end engine_duty_cycle = {measured:.2f} < {duty}")
    for key in ("from_launch", "reference_from_launch"):
        if key in results and results[key]["received"] < results[key]["events"]:
            failures.append(f"{key}: {results[key]['received']:.0f} of {results[key]['events']:.0f} "
                            "events came back")
    return failures


def ceiling_bounds(bounds: dict) -> list[tuple[str, int]]:
    """(results key, events/s) of each source's stream-ceiling bound that bounds.json sets."""
    return [(key, bounds[name]) for key, name in (("stream_ceiling", "stream_ceiling_events_per_s"),
                                                  ("stream_ceiling_faust", "stream_ceiling_faust_events_per_s"))
            if bounds.get(name)]
