"""The chart's side of candidate configurations (shadow traffic): a route's `candidate` reaches
STREAMS_TOPICS as written and the worker reads it, one that uses the LLM needs llm.enabled as a
route does, and values the worker would refuse fail rendering."""

from __future__ import annotations

import json
import os
import re

import pytest

from streams.settings import Candidate, Settings, TopicRoute
from tests.helm.chart import CHART, config, kinds, render, render_error

ROUTE = ("config.topics[0].input=t", "config.topics[0].candidate.name=c")


def worker_settings(monkeypatch, cfg: dict[str, str]) -> Settings:
    """The worker's settings from the rendered ConfigMap, as the pod's environment."""
    for name in list(os.environ):
        if name.startswith("STREAMS_"):
            monkeypatch.delenv(name)
    for name, value in cfg.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_the_candidate_scenario_puts_an_llm_candidate_in_streams_topics(monkeypatch):
    docs = render("candidate")
    cfg = config(docs)
    routes = {r["input"]: r for r in json.loads(cfg["STREAMS_TOPICS"])}
    assert routes["support.tickets"]["candidate"] == {
        "name": "llm-labels", "label_from": "llm", "share": 10, "model_version": "llm-labels-candidate"}
    assert "label_from" not in routes["support.tickets"]  # the live labels stay the encoder's
    assert "candidate" not in routes["orders.notes"]
    assert cfg["STREAMS_LLM_MODEL"] == "smollm2-135m-instruct"  # the candidate needs the LLM
    # The worker reads it: the candidate, its shadow topics among what the route writes, and the
    # LLM for the candidate only.
    settings = worker_settings(monkeypatch, cfg)
    route = settings.route("support.tickets")
    assert route.candidate.name == "llm-labels" and route.candidate.share == 10
    assert route.label_from == "encoder" and route.shadow().label_from == "llm"
    assert {"support.tickets.enriched.shadow", "support.tickets.dlq.shadow"} <= set(route.produces)
    assert route.output == "support.tickets.enriched"
    assert settings.candidate_settings(route).model_version == "llm-labels-candidate"
    assert settings.route("orders.notes").candidate is None


def test_keda_watches_the_inputs_not_the_shadow_topics():
    [scaled] = kinds(render("candidate", "autoscaling.keda.enabled=true"), "ScaledObject")
    assert sorted(t["metadata"]["topic"] for t in scaled["spec"]["triggers"]) == ["orders.notes", "support.tickets"]


def test_a_candidate_from_set_flags_reaches_the_worker(monkeypatch):
    """`--set ...share=12.5` gives the string "12.5" (helm types integers only); the worker reads
    it as the number. Output and DLQ topics of its own pass through."""
    cfg = config(render(None, *ROUTE, "config.topics[0].candidate.share=12.5",
                        "config.topics[0].candidate.output=t.candidate", "config.topics[0].candidate.dlq=t.candidate.dlq",
                        "config.topics[0].candidate.ner_model=/var/cache/streams/models/ner-v2"))
    assert json.loads(cfg["STREAMS_TOPICS"])[0]["candidate"]["share"] == "12.5"
    route = worker_settings(monkeypatch, cfg).route("t")
    assert route.candidate.share == 12.5 and route.candidate.ner_model == "/var/cache/streams/models/ner-v2"
    assert route.produces == ["t.enriched", "t.dlq", "t.candidate", "t.candidate.dlq"]


def test_the_chart_knows_the_keys_of_a_route_and_a_candidate():
    """The lists the chart checks keys against are the worker's models' fields."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()

    def chart_list(var: str) -> set[str]:
        return set(re.findall(r'"([a-z_]+)"', re.search(rf"\${var} := list ([^}}]*)", helpers)[1]))

    assert chart_list("routeKeys") == set(TopicRoute.model_fields)
    assert chart_list("candidateKeys") == set(Candidate.model_fields)


@pytest.mark.parametrize("sets, message", [
    (("config.topics[0].candidate.label_from=llm",),
     "config.topics[0] (t): candidate (c): label_from is llm but llm.enabled is false"),
    (("config.topics[0].candidate.entities_from=llm",),
     "config.topics[0] (t): candidate (c): entities_from is llm but llm.enabled is false"),
    (("config.topics[0].candidate.fields=SupportTicketFields",),
     "candidate (c): typed fields (SupportTicketFields) come from the LLM engine: set llm.enabled"),
])
def test_a_candidate_that_uses_the_llm_needs_llm_enabled(sets, message):
    assert message in render_error(None, *ROUTE, *sets)
    render(None, *ROUTE, *sets, "llm.enabled=true")  # and renders with it


def test_the_candidate_scenario_fails_without_the_llm():
    assert "candidate (llm-labels): label_from is llm but llm.enabled is false" in \
        render_error("candidate", "llm.enabled=false")


@pytest.mark.parametrize("sets, message", [
    (("config.topics[0].input=t", "config.topics[0].candidate.share=10"), "candidate needs a name"),
    (("config.topics[0].input=t", "config.topics[0].candidate.name=-c"), 'candidate needs a name: 1 to 64'),
    (("config.topics[0].input=t", f"config.topics[0].candidate.name={'c' * 65}"), "candidate needs a name"),
    ((*ROUTE, "config.topics[0].candidate.shares=10"), 'candidate: unknown key "shares"'),
    ((*ROUTE, "config.topics[0].candidate.redact.default=mask"), 'candidate: unknown key "redact"'),
    ((*ROUTE, "config.topics[0].candidate.share=101"), "share must be between 0 and 100"),
    ((*ROUTE, "config.topics[0].candidate.share=-1"), "share must be"),
    ((*ROUTE, "config.topics[0].candidate.share=ten"), "share must be a number"),
    ((*ROUTE, "llm.enabled=true", "config.topics[0].candidate.label_from=gpt"),
     "candidate (c): label_from must be encoder or llm"),
    ((*ROUTE, "llm.enabled=true", "config.topics[0].candidate.fields=support-ticket"),
     "candidate (c): fields must name an Avro record"),
    (("config.topics[0].input=t", "config.topics[0].candidate=c"), "candidate must be a map"),
    ((*ROUTE, "config.topics[0].candidate.output=t.enriched"),
     "a candidate's output and DLQ must be topics of their own, not another input, output, DLQ or copy topic"),
    ((*ROUTE, "config.topics[1].input=t.dlq.shadow"), "must be topics of their own"),
    ((*ROUTE, "config.topics[0].output=o", "config.topics[1].input=u", "config.topics[1].candidate.name=d",
      "config.topics[1].candidate.output=o.shadow"), "must be topics of their own"),
])
def test_candidate_values_that_cannot_work_fail_rendering(sets, message):
    assert message in render_error(None, *sets)
