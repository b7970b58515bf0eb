"""`streams bench --engine llm` (`python -m bench --engine llm`): the LLM engine on the support-ticket samples, same texts and
model in one run (the task `streams demo --llm` runs: label and SupportTicketFields from the LLM).

batched      the engine: one `generate` over all texts (up to `llm_batch` rows decoded together,
             a finished row replaced at once by the next text: continuous batching)
naive        one text per `generate` call (what calling the model per request costs)
grammar      the same texts with and without the grammar, alternated, compared per output token
             (an unconstrained output runs to another length, so whole-run times would not compare)
end-to-end   the worker on the embedded broker, first produce -> last enriched record read back
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from streams import samples
from streams.settings import SUPPORT_TICKET_LABELS, Settings

TOPIC = "support.tickets"
TASK_TOPICS = [{"input": TOPIC, "labels": SUPPORT_TICKET_LABELS, "label_from": "llm",
                "fields": "SupportTicketFields"},
               {"input": "orders.notes", "labels": {"other": "anything"}}]


def ticket_texts(n: int) -> list[str]:
    return samples.texts(n, TOPIC)


def _engine(settings: Settings):
    from streams.engine import LabelSet
    from streams.engine.llm import LLMTask
    from streams.runtime import load_llm
    from streams.serde.fields import load_field_schema

    llm = load_llm(settings)
    llm.add_task(LLMTask(TOPIC, LabelSet.from_mapping(SUPPORT_TICKET_LABELS), None,
                         load_field_schema(settings.schema_dir, "SupportTicketFields")))
    llm.generate(ticket_texts(1), TOPIC)  # warm-up
    return llm


def bench_batched(llm, texts: list[str]) -> dict:
    started = time.perf_counter()
    results = llm.generate(texts, TOPIC)
    seconds = time.perf_counter() - started
    tokens = sum(getattr(r, "output_tokens", 0) for r in results)
    return {"events_per_s": len(texts) / seconds, "output_tokens_per_s": tokens / seconds,
            "seconds": seconds, "failed": sum(isinstance(r, Exception) for r in results),
            "labels": [getattr(getattr(r, "classification", None), "label", None) for r in results]}


def bench_naive(llm, texts: list[str]) -> dict:
    started = time.perf_counter()
    tokens = 0
    for text in texts:
        [r] = llm.generate([text], TOPIC)
        tokens += getattr(r, "output_tokens", 0)
    seconds = time.perf_counter() - started
    return {"events_per_s": len(texts) / seconds, "output_tokens_per_s": tokens / seconds}


def bench_grammar(llm, texts: list[str], rounds: int = 2) -> dict:
    """Seconds per output token of the same texts decoded with and without the grammar, the two
    alternated `rounds` times (a noisy machine drifts between minutes, not between alternations);
    per token, since an unconstrained output runs to another length. Also the grammar's own
    share inside the constrained runs (time in xgrammar / the rest), which noise cannot move."""
    prepared = llm.tasks[TOPIC]
    ids = llm.prompt_ids(TOPIC, texts)
    cap = llm.max_new_tokens
    spent = {True: 0.0, False: 0.0}
    tokens = {True: 0, False: 0}
    grammar_s = 0.0
    for _ in range(rounds):
        for constrained in (True, False):
            started = time.perf_counter()
            llm._generate_pass(prepared, ids, cap, constrained)
            spent[constrained] += time.perf_counter() - started
            tokens[constrained] += llm.last_pass["row_steps"]
            if constrained:
                grammar_s += llm.last_pass["grammar_s"]
    per_token = {k: spent[k] / max(1, tokens[k]) for k in spent}
    return {"constrained_s_per_token": per_token[True], "unconstrained_s_per_token": per_token[False],
            "overhead_pct": (per_token[True] / per_token[False] - 1) * 100,
            "grammar_share_pct": grammar_s / (spent[True] - grammar_s) * 100,
            "tokens": {"constrained": tokens[True], "unconstrained": tokens[False]}, "rounds": rounds}


def bench_end_to_end(n: int, log_dir: Path) -> dict:
    """Events/s counting every outcome, like the engine rows: an output the cap cut off is
    dead-lettered (llm_truncated), so the DLQ is read too; the engine's duty cycle and batch fill."""
    from .stream import engine_figures, scrape_engine, worker_rig

    with worker_rig(log_dir, "llm", STREAMS_TOPICS=json.dumps(TASK_TOPICS)) as rig:
        rig.reader.subscribe([f"{TOPIC}.enriched", f"{TOPIC}.dlq"])
        events = [(f"l{i}".encode(), json.dumps({"event_id": f"l{i}", "text": t}).encode())
                  for i, t in enumerate(ticket_texts(n))]
        pending = {key for key, _ in events}
        enriched = dead = 0
        meters_before = scrape_engine(rig.health_port)
        start = time.time()
        for key, value in events:
            rig.producer.produce(TOPIC, key=key, value=value, timestamp=int(time.time() * 1000))
        rig.producer.flush(60)
        deadline = time.monotonic() + 1800
        while pending and time.monotonic() < deadline:
            for msg in rig.reader.consume(min(500, len(pending)), 0.2):
                if msg.error() or msg.key() not in pending:
                    continue
                pending.discard(msg.key())
                if msg.topic().endswith(".dlq"):
                    dead += 1
                else:
                    enriched += 1
        elapsed = time.time() - start
        engine = engine_figures(meters_before, scrape_engine(rig.health_port))
    return {"events": n, "enriched": enriched, "dead_lettered": dead,
            "events_per_s": (enriched + dead) / elapsed, "seconds": elapsed, **engine}


def run(n_texts: int, n_naive: int, n_events: int, out: Path, end_to_end: bool = True) -> dict:
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)  # the end-to-end row's logs go there too
    settings = Settings()
    llm = _engine(settings)
    texts = ticket_texts(n_texts)
    results = {"device": str(llm.device), "dtype": str(llm.dtype).replace("torch.", ""),
               "model": f"{llm.info.name} ({llm.info.version})", "texts": n_texts,
               "llm_batch": llm.max_batch, "cpu_count": os.cpu_count(),
               "torch_threads": torch.get_num_threads(),
               "prompt_prefix_tokens": len(llm.tasks[TOPIC].prefix_ids)}
    if torch.cuda.is_available() and llm.device.type == "cuda":
        results["card"] = torch.cuda.get_device_name(llm.device)
    results["batched"] = _progress("batched", bench_batched(llm, texts))
    results["naive"] = _progress("naive", bench_naive(llm, texts[:n_naive]))
    results["grammar"] = _progress("grammar", bench_grammar(llm, texts, rounds=1))
    results["ratios"] = {
        "batched/naive": results["batched"]["events_per_s"] / results["naive"]["events_per_s"],
        # speed per step, constrained over unconstrained: 1 / (1 + overhead)
        "constrained/unconstrained": results["grammar"]["unconstrained_s_per_token"]
        / results["grammar"]["constrained_s_per_token"]}
    del llm
    if end_to_end:
        results["end_to_end"] = _progress("end_to_end", bench_end_to_end(n_events, out.parent))
        results["ratios"]["end_to_end/engine"] = (results["end_to_end"]["events_per_s"]
                                                  / results["batched"]["events_per_s"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results


def _progress(name: str, row: dict) -> dict:
    """Each figure on stderr as soon as it is measured: a long run cut short still shows them."""
    print(json.dumps({"run": name, **row}), file=sys.stderr, flush=True)
    return row


def check(results: dict, bounds: dict) -> list[str]:
    return [f"{name} = {results['ratios'][name]:.2f} < {low}"
            for name, low in bounds.get("llm", {}).get("ratios", {}).items()
            if name in results["ratios"] and results["ratios"][name] < low]
