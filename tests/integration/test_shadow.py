"""A candidate on a route, through the broker, as an operator runs it: the worker with an
encoder-label route shadowed by an LLM-label candidate (the real SmolLM2-135M-Instruct) on
every event; each event gets its live record and its candidate's outcome; `streams compare`
reads the live and the shadow topics; a replay of the same range with another label set
compares the same way. The shadow path with fakes: tests/test_shadow.py."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from streams import samples
from streams.settings import SUPPORT_TICKET_LABELS, Settings
from tests.fixtures.kafka_io import Scenario, WorkerProcess, collect, produce
from tests.helm.observability import CANDIDATE_ROW, metric_names, row_panels
from tests.integration.test_compare import _cli
from tests.integration.test_dependencies import committed

pytestmark = [pytest.mark.integration, pytest.mark.models]

TICKETS = samples.events("support.tickets")[:6]
FAIL_TEXT = "parcel " * 700  # over the candidate's input cap: its own dead letter, the live record goes


@pytest.fixture(scope="module")
def shadowed(broker, tiny_models, tmp_path_factory):
    scenario = Scenario(broker.bootstrap, tiny_models, Settings().model_cache, tmp_path_factory.mktemp("shadow"))
    scenario.extra_env = {
        "STREAMS_TOPICS": json.dumps([{"input": scenario.input, "labels": SUPPORT_TICKET_LABELS,
                                       "candidate": {"name": "llm-labels", "label_from": "llm"}}]),
        "STREAMS_LLM_MAX_NEW_TOKENS": "64", "STREAMS_LLM_MAX_INPUT_TOKENS": "512"}
    settings = scenario.settings
    events = [(r["event_id"].encode(), json.dumps({"event_id": r["event_id"], "text": r["text"]}).encode())
              for r in TICKETS]
    events.append((b"too-long", json.dumps({"event_id": "too-long", "text": FAIL_TEXT}).encode()))
    produce(settings, scenario.input, events)
    worker = WorkerProcess(scenario).start()
    shadow_topic, shadow_dlq = f"{scenario.output}.shadow", f"{scenario.dlq}.shadow"
    try:
        live = collect(settings, scenario, timeout=300, until=lambda c: len(c.enriched_ids) >= len(events))
        shadow_scenario = _Topics(scenario, shadow_topic, shadow_dlq)
        shadow = collect(settings, shadow_scenario, timeout=300,
                         until=lambda c: len(c.enriched_ids) + len(c.dead) >= len(events))
        with urllib.request.urlopen(f"http://127.0.0.1:{scenario.health_port}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
    finally:
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
    return scenario, events, live, shadow, worker.log(), metrics, committed(settings, scenario.input)


class _Topics:
    """What `collect` reads: another output and DLQ than the scenario's."""

    def __init__(self, scenario, output, dlq):
        self.output, self.dlq = output, dlq


def test_every_event_has_its_live_record_and_its_candidates_outcome(shadowed):
    scenario, events, live, shadow, log, _, _ = shadowed
    ids = {k.decode() for k, _ in events}
    assert live.enriched_ids == ids and not live.dead  # every live record, the long text's too
    dead = {k.decode(): h["__streams.errors.reason"].decode() for k, _, h in shadow.dead}
    assert shadow.enriched_ids | set(dead) == ids and not shadow.enriched_ids & set(dead)
    assert dead.get("too-long") and "too-long" not in shadow.enriched_ids, dead
    # Stamps: live records name no candidate, the candidate's name it and its prompt.
    for _, record in live.enriched:
        assert record["stamp"]["candidate"] is None and record["stamp"]["prompt_digest"] is None
        assert {m["task"]: m["name"] for m in record["models"]}["classification"] == "tiny-encoder"
    for _, record in shadow.enriched:
        assert record["stamp"]["candidate"] == "llm-labels"
        assert record["stamp"]["prompt_digest"].startswith("sha256:")
        assert record["stamp"]["labels_digest"] == live.enriched[0][1]["stamp"]["labels_digest"]
        assert {m["task"]: m["name"] for m in record["models"]}["classification"].startswith("SmolLM2")
        assert record["classification"]["label"] in SUPPORT_TICKET_LABELS
    assert "records of " + f"{scenario.output}.shadow" in log and "candidate=llm-labels" in log


def test_the_group_committed_past_every_event_the_candidate_failed(shadowed):
    """A candidate's dead letter is an outcome like any other: the input offsets of the fresh
    topic were all committed when the worker stopped, the long text's included."""
    scenario, events, _, shadow, _, _, offsets = shadowed
    assert "too-long" in {k.decode() for k, _, _ in shadow.dead}
    assert sum(max(0, offset) for offset in offsets.values()) == len(events), offsets  # none: -1001


def test_compare_reads_the_live_and_the_shadow_topic(shadowed, tmp_path):
    scenario, events, live, shadow, _, _, _ = shadowed
    out = tmp_path / "compare.json"
    run = _cli(scenario, "compare", scenario.output, f"{scenario.output}.shadow", "--json", str(out))
    assert run.returncode == 0, run.stderr + run.stdout
    print(run.stdout)
    assert "labels: agreement" in run.stdout and "A (rows) x B (columns)" in run.stdout
    [topic] = json.loads(out.read_text())["topics"]
    assert topic["joined"] == len(shadow.enriched_ids) and topic["only_a"] == len(events) - topic["joined"]
    agreed = sum(live_label == shadow_label for live_label, shadow_label in _labels(live, shadow))
    assert topic["label_agreement"] == pytest.approx(agreed / topic["joined"])
    assert topic["entities"]["overall"]["f1"] == 1.0  # the candidate runs the route's NER


def test_a_replay_with_another_label_set_compares_the_same_way(shadowed):
    scenario, events, live, _, _, _, _ = shadowed
    relabelled = {**SUPPORT_TICKET_LABELS}
    relabelled["shipping"] = relabelled.pop("delivery")
    replayed = f"{scenario.name}.relabelled"
    env = {"STREAMS_TOPICS": json.dumps([{"input": scenario.input, "labels": relabelled}])}
    run = _cli(scenario, "replay", "--topic", scenario.input, "--from-offset", "0", "--output-topic", replayed,
               env=env, timeout=300)
    assert run.returncode == 0, run.stderr + run.stdout
    assert f"read {len(events)}, enriched {len(events)}, dead-lettered 0" in run.stdout, run.stdout
    run = _cli(scenario, "compare", scenario.output, replayed, timeout=300)
    assert run.returncode == 0, run.stderr + run.stdout
    print(run.stdout)
    assert f"joined {len(events)}, only in A 0, only in B 0" in run.stdout
    # No shadow records from a replay: it runs no candidate.
    assert "shadow" not in run.stdout.split("models:")[0].replace(scenario.output, "")


def _labels(live, shadow):
    by_id = {r["event_id"]: r["classification"]["label"] for _, r in live.enriched}
    return [(by_id[r["event_id"]], r["classification"]["label"]) for _, r in shadow.enriched]


def test_the_dashboards_candidate_row_reads_what_the_worker_exports(shadowed):
    scenario, events, live, shadow, _, metrics, _ = shadowed
    families = metric_names({line.split("{")[0].split(" ")[0] for line in metrics.splitlines()
                             if line and not line.startswith("#")})
    used = metric_names([t["expr"] for p in row_panels(CANDIDATE_ROW) for t in p.get("targets", [])])
    assert used and used <= families, sorted(used - families)
    compared = re.search(r'^streams_shadow_compared_total\{[^}]*candidate="llm-labels"[^}]*\} (\S+)', metrics, re.M)
    assert compared and float(compared.group(1)) == len(shadow.enriched_ids)
