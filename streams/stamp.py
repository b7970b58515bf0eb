"""What made an enriched record besides its models: the `stamp` of EnrichedEvent v4.

Per route, once at start-up (`Runtime`), never per event: digests of the route's label set,
of the LLM's prompt and few-shot examples as the engine prepared them, and of the route's
field record. Every record of the route then carries the same stamp, so two records whose
`models` and `stamp` are equal were produced by the same configuration.

A digest is `"sha256:"` + the first 16 hex digits of the SHA-256 of the value's canonical JSON:
sorted keys, no whitespace, UTF-8 (non-ASCII as itself). The same on every process and machine.
What each digest covers (docs/contract.md, "The stamp"):

- `labels_digest`: the route's labels with their descriptions, a JSON object (label ->
  description), so their order does not count (the LLM's prompt, which lists them in order, has
  its own digest); null without labels;
- `prompt_digest`: `{"system": <system prompt>, "assistant_prefix": <answer start>}` of the
  LLM's prompt for the route; null where no LLM works on the route;
- `examples_digest`: the few-shot examples in that prompt, `[{"text", "output"}, ...]` in
  prompt order, each output cut to what the route asks for (`[]` when few-shot is off); null
  where no LLM works on the route;
- `fields_digest`: the field record `schemas/fields/<Name>.avsc` as parsed JSON (docs,
  `grounded` and `maxLength` included: Avro's Parsing Canonical Form drops them, yet they
  change what the LLM writes); null without typed fields;
- `candidate`: null for live records; a route's candidate's name on its shadow records
  (`runtime.Shadow`), whose digests are of the candidate's own labels, prompt and field record.

`python -m streams.stamp` prints the stamp each configured route would get (the `STREAMS_*`
environment, as the worker reads it), without loading a model: compare it with a record's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from .engine.types import Prompt
from .serde.fields import load_field_record

if TYPE_CHECKING:
    from .settings import Settings, TopicRoute

PREFIX = "sha256:"
HEX_DIGITS = 16


def canonical_json(value) -> bytes:
    """The bytes a digest is taken of: JSON with sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def digest(value) -> str:
    """`sha256:` + the first 16 hex digits of the SHA-256 of `canonical_json(value)`."""
    return PREFIX + hashlib.sha256(canonical_json(value)).hexdigest()[:HEX_DIGITS]


def labels_digest(labels: Mapping[str, str]) -> str | None:
    return digest(dict(labels)) if labels else None


def prompt_digest(prompt: Prompt) -> str:
    return digest({"system": prompt.system, "assistant_prefix": prompt.assistant_prefix})


def examples_digest(examples: Sequence[tuple[str, dict]]) -> str:
    return digest([{"text": text, "output": output} for text, output in examples])


def fields_digest(field_record: dict) -> str:
    return digest(field_record)


def route_stamp(route: TopicRoute, schema_dir: Path, prompt: Prompt | None) -> dict:
    """The stamp of a route's records (an EnrichedEvent `Stamp` as a dict): its labels, the
    engine's `prompt` for it (`Engine.prompt_for`, None without an LLM), its field record read
    from `schema_dir`. Live records: `candidate` is null."""
    return {
        "labels_digest": labels_digest(route.labels),
        "prompt_digest": None if prompt is None else prompt_digest(prompt),
        "examples_digest": None if prompt is None else examples_digest(prompt.examples),
        "fields_digest": fields_digest(load_field_record(schema_dir, route.fields)) if route.fields else None,
        "candidate": None,
    }


def configured_stamps(settings: Settings) -> dict[str, dict]:
    """Per input topic, the stamp the configured worker gives its records, from the settings
    alone: the LLM's prompt is built as `LLMEngine.add_task` builds it (`task_prompt`), without
    loading the model. Imports torch when a route uses the LLM."""
    from .runtime import llm_task, topic_plans

    plans = topic_plans(settings)
    out = {}
    for route in settings.topics:
        prompt = None
        if plans[route.input].uses_llm:
            from .engine.llm import EXAMPLES_DIR, task_prompt

            prompt = task_prompt(llm_task(plans[route.input], settings), settings.llm_few_shot,
                                 settings.llm_examples_dir or EXAMPLES_DIR)
        out[route.input] = route_stamp(route, settings.schema_dir, prompt)
    return out


def main() -> None:
    from .settings import Settings

    settings = Settings()
    for topic, stamp in configured_stamps(settings).items():
        print(json.dumps({"input": topic, "stamp": stamp}, ensure_ascii=False))
    for route in settings.topics:  # a candidate's records: its own configuration, and its name
        if route.candidate is not None:
            stamp = configured_stamps(settings.candidate_settings(route))[route.input]
            print(json.dumps({"input": route.input, "output": route.candidate.output,
                              "stamp": stamp | {"candidate": route.candidate.name}}, ensure_ascii=False))


if __name__ == "__main__":
    main()
