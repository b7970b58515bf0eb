"""What a worker loads once at start-up and every batch uses: settings, engine, schema catalog,
producer, each topic's labels and models, the worker's id. `Runtime.load` builds the real ones
from the settings; a test builds a `Runtime` from fakes passed in.

It also runs the engine for the pipeline (`Runtime.infer`: a failing batch split, a broken
engine told from a bad event) and sizes the sources' batches by the engine's measured rate
(`max_events_for`); `deliver` produces a batch's records through its producer."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Callable, Sequence

from . import produce
from .engine import Engine, Inference, LabelSet, ModelInfo, NoopEngine
from .engine.thread import inference_thread
from .errors import RetriableError, describe
from .kafka import ensure_output_topics
from .produce import AckingProducer
from .records import OutRecord
from .serde import SchemaCatalog
from .settings import Candidate, Settings, TopicRoute
from .stamp import route_stamp
from .telemetry import Telemetry, default_telemetry

if TYPE_CHECKING:
    from .engine.llm import LLMEngine, LLMTask
    from .engine.topics import TopicPlan

log = logging.getLogger("streams.runtime")

PROBE_TEXT = "Hello, my parcel has not arrived yet."

EngineFactory = Callable[[Settings, Telemetry | None], Engine]


@dataclass(frozen=True, slots=True)
class InferenceFailure:
    """One event the engine failed on while the engine itself works (a probe text passes)."""

    exc: BaseException
    reason: str = "inference_error"


@dataclass(frozen=True, slots=True)
class Shadow:
    """A route's candidate, loaded (`TopicRoute.candidate`): its engine, and what its records
    are made with and where they go: its route (`TopicRoute.shadow`), labels, models, stamp
    (`candidate` set to its name)."""

    candidate: Candidate
    route: TopicRoute
    engine: Engine
    labels: LabelSet
    models: list[ModelInfo]
    stamp: dict

    @classmethod
    def of(cls, route: TopicRoute, engine: Engine, schema_dir) -> "Shadow":
        shadow = route.shadow()
        stamp = route_stamp(shadow, schema_dir, engine.prompt_for(route.input)) | {"candidate": route.candidate.name}
        return cls(route.candidate, shadow, engine, LabelSet.from_mapping(shadow.labels),
                   engine.models_for(route.input), stamp)


class Runtime:
    """What a worker loads once at start-up: topics, schemas, models, a producer. Failing here
    is the point: a missing model or unreachable registry stops it before it takes any event.

    `engine_factory(settings, telemetry)` makes the engine again when it broke (`reload_engine`).
    `candidates`: per input topic whose route names a candidate, the candidate's engine (made by
    the same factory from `Settings.candidate_settings`); `shadows` holds them loaded."""

    def __init__(self, settings: Settings, engine: Engine, catalog: SchemaCatalog, producer: AckingProducer,
                 *, telemetry: Telemetry | None = None, engine_factory: EngineFactory | None = None,
                 candidates: dict[str, Engine] | None = None):
        self.settings = settings
        # Traces/metrics; by default the process's own, configured by the OTEL_* environment.
        self.telemetry = telemetry if telemetry is not None else \
            default_telemetry(settings.app_id, settings.app_id)
        # The engine's duty cycle and batch fill, metered by the one inference thread.
        self.telemetry.metrics.watch_engine(inference_thread)
        self.engine = engine
        self.engine_factory = engine_factory if engine_factory is not None else load_engines
        self.catalog = catalog
        self.producer = producer
        self.labels = {r.input: LabelSet.from_mapping(r.labels) for r in settings.topics}
        # Provenance per topic: the models that produced its records (they differ by topic when
        # some take their label or entities from the LLM).
        self.models = {r.input: engine.models_for(r.input) for r in settings.topics}
        # What else made them (EnrichedEvent `stamp`): digests of each topic's labels, LLM prompt
        # and examples, field record; computed here, once, and shared by its every record.
        self.stamps = self._stamps()
        self.shadows = self._shadows(candidates or {})
        self.worker_id = settings.worker_id or f"{socket.gethostname()}:{os.getpid()}"
        # Per input topic with a redaction policy, its redactor (the pseudonym key inside).
        self.redactors = settings.redactors()

    @classmethod
    def load(cls, settings: Settings, *, telemetry: Telemetry | None = None,
             catalog: SchemaCatalog | None = None, producer: AckingProducer | None = None,
             engine_factory: EngineFactory | None = None) -> "Runtime":
        """The real parts, from `settings`: the output topics created and a producer for them,
        the schemas registered, the models loaded and warmed up on the inference thread. A
        `catalog` or `producer` passed in is used as it is (a fake: then no registry, or no
        broker, is asked for anything); `engine_factory` replaces `load_engines`."""
        if producer is None:
            ensure_output_topics(settings)
        if catalog is None:
            catalog = SchemaCatalog.from_settings(settings)
            catalog.ensure_registered()
        if telemetry is None:  # made here: the LLM engine counts its dropped spans in it
            telemetry = default_telemetry(settings.app_id, settings.app_id)
        factory = engine_factory if engine_factory is not None else load_engines
        engine, candidates = load_all(factory, settings, telemetry)
        if producer is None:
            producer = acking_producer(settings)
        runtime = cls(settings, engine, catalog, producer, telemetry=telemetry, engine_factory=factory,
                      candidates=candidates)
        runtime.telemetry.record_model_load(engine.load_seconds, engine.models, engine.device)
        stamps = [*runtime.stamps.items(),
                  *((f"{s.route.output} (candidate of {t})", s.stamp) for t, s in runtime.shadows.items())]
        for what, stamp in stamps:  # digests only: no event text, no secret
            log.info("records of %s are stamped %s", what,
                     " ".join(f"{k}={v}" for k, v in stamp.items() if v is not None) or "(nothing)")
        runtime.telemetry.record_retry(None)  # healthy: the degraded gauge and retry counter start at 0
        return runtime

    def _stamps(self) -> dict[str, dict]:
        return {r.input: route_stamp(r, self.settings.schema_dir, self.engine.prompt_for(r.input))
                for r in self.settings.topics}

    def _shadows(self, engines: dict[str, Engine]) -> dict[str, Shadow]:
        return {r.input: Shadow.of(r, engines[r.input], self.settings.schema_dir)
                for r in self.settings.topics if r.candidate is not None}

    # ---- inference ------------------------------------------------------------------------------

    def infer(self, texts: Sequence[str], labels: LabelSet, topic: str | None = None,
              engine: Engine | None = None) -> list[Inference | InferenceFailure]:
        """Run a batch; if it fails (an exception, out of memory), split it and retry the
        halves, so one bad event fails alone and its neighbours are still enriched. An event
        that fails alone is bad data only if the engine still works: a probe text must pass,
        else the engine is broken (`RetriableError("accelerator")`: the worker reloads it).
        A text the engine failed on its own while working (an LLM output cut off by the token
        cap) fails alone at once, with the engine's reason, and needs no probe.
        `engine`: a candidate's (`Shadow.engine`), default the route's own."""
        engine = engine or self.engine
        out = self._infer_split(engine, texts, labels, topic)
        failures = sum(isinstance(r, InferenceFailure) and r.reason == "inference_error" for r in out)
        if failures:
            try:
                self._engine_infer(engine, [PROBE_TEXT], labels, topic)
            except Exception as exc:  # noqa: BLE001 - not the events' fault
                _free_accelerator_memory()
                raise RetriableError("accelerator", f"the models fail on a probe text too: "
                                                    f"{describe(exc)}") from exc
        return out

    @staticmethod
    def _engine_infer(engine: Engine, texts: Sequence[str], labels: LabelSet, topic: str | None):
        """On the one inference thread (streams/engine/thread.py), whichever source calls, its
        time counted as the engine's busy time. An engine that runs no torch (the no-op engine)
        is called in place: the stream ceiling it measures is the stream's alone, without a
        thread hand-off per batch (and its duty cycle is 0)."""
        if not engine.runs_models:
            return engine.infer(texts, labels, topic)
        return inference_thread.infer(engine.infer, texts, labels, topic)

    def _infer_split(self, engine: Engine, texts: Sequence[str], labels: LabelSet,
                     topic: str | None = None) -> list[Inference | InferenceFailure]:
        try:
            results = self._engine_infer(engine, texts, labels, topic)
        except Exception as exc:  # noqa: BLE001 - every failure is contained to its events
            _free_accelerator_memory()
            if len(texts) == 1:
                return [InferenceFailure(exc)]
            mid = len(texts) // 2
            return self._infer_split(engine, texts[:mid], labels, topic) + \
                self._infer_split(engine, texts[mid:], labels, topic)
        return [InferenceFailure(r, getattr(r, "reason", "inference_error")) if isinstance(r, Exception) else r
                for r in results]

    def reload_engine(self) -> None:
        """Load the models again (after the engine failed on a probe text)."""
        self.engine, candidates = load_all(self.engine_factory, self.settings, self.telemetry)
        self.stamps = self._stamps()  # the same settings: the same stamps, from the new engine
        self.shadows = self._shadows(candidates)

    # ---- batch sizes ----------------------------------------------------------------------------

    def max_events_for(self, topic: str) -> int | None:
        """The most events of `topic` a source should take into one batch: the LLM's measured
        events/s x `llm_batch_budget_s` (default max_poll_interval_s / 3), at least 1, at most
        `max_batch`; None when the topic does not use the LLM (take up to `max_batch`). A
        route's candidate that uses an LLM shares the budget: n events cost the route's LLM n
        and the candidate's n x share, so n <= 1 / (1 / n_route + share / n_candidate), each
        n_x being what that engine alone finishes within the budget."""
        s = self.settings
        budget = s.llm_batch_budget_s or s.max_poll_interval_s / 3
        shares = [(self.engine.max_events_for(topic, budget), 1.0)]
        shadow = self.shadows.get(topic)
        if shadow is not None and shadow.candidate.share > 0:
            shares.append((shadow.engine.max_events_for(topic, budget), shadow.candidate.share / 100))
        cost = sum(share / n for n, share in shares if n is not None)  # of the budget, per event
        return None if not cost else max(1, min(int(1 / cost + 1e-9), s.max_batch))

    @property
    def progress_at(self) -> float | None:
        """When an LLM last made progress (time.monotonic()), the routes' or a candidate's:
        /livez tells a long batch from a stuck one by it; None where no engine measures it."""
        times = [t for t in (self.engine.progress_at, *(s.engine.progress_at for s in self.shadows.values()))
                 if t is not None]
        return max(times) if times else None

    def max_events(self) -> int | None:
        """For a source whose batch mixes every input topic: the smallest cap of any topic."""
        caps = [n for n in (self.max_events_for(r.input) for r in self.settings.topics) if n is not None]
        return min(caps) if caps else None


def deliver(runtime: Runtime, out: list[OutRecord], timeout: float | None = None, *,
            sent: bool = False) -> None:
    """Produce a batch's records through `runtime.producer` and wait for the broker's
    acknowledgements; a record the broker refuses for good is dead-lettered in its place, to its
    route's DLQ (a shadow record to its candidate's), as this worker's (`streams.produce.deliver`).
    `sent`: `out` was already handed to `runtime.producer.send` (as `enrich_records` emitted it);
    only the acknowledgements are awaited."""
    settings = runtime.settings

    def dlq_topic(record: OutRecord) -> str:
        route = settings.route(record.source.topic)
        return route.candidate.dlq if record.kind == "shadow" else route.dlq

    produce.deliver(runtime.producer, out, timeout, sent=sent, worker_id=runtime.worker_id,
                    dlq_topic=dlq_topic)


def _free_accelerator_memory() -> None:
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


# ---- the parts, from settings --------------------------------------------------------------------

def acking_producer(settings: Settings) -> AckingProducer:
    return AckingProducer(settings.librdkafka_config() | {
                              "message.timeout.ms": int(settings.delivery_timeout_s * 1000)},
                          max_message_bytes=settings.max_message_bytes,
                          max_backoff_s=settings.retry_max_backoff_s)


def load_engine(factory: EngineFactory, settings: Settings, telemetry: Telemetry | None = None) -> Engine:
    """The engine from `factory`, warmed up (on the inference thread: `Runtime.load` calls it
    there)."""
    engine = factory(settings, telemetry)
    warm_up_seconds = engine.warm_up()
    if engine.runs_models:
        log.info("models warmed up in %.1fs", warm_up_seconds)
    log.info("models loaded on %s in %.1fs: %s", engine.device, engine.load_seconds,
             ", ".join(f"{m.task}={m.name}@{m.version}" for m in engine.models))
    return engine


# What makes two LLM engines the same one (`load_engines(shared=...)`).
LLM_SETTINGS = {name for name in Settings.model_fields if name.startswith("llm_")} | {"device", "model_cache"}


def load_all(factory: EngineFactory, settings: Settings,
             telemetry: Telemetry | None) -> tuple[Engine, dict[str, Engine]]:
    """The routes' engine, and per route with a candidate the candidate's engine, from its
    settings (`Settings.candidate_settings`); each made by `factory` and warmed up on the
    inference thread. With `load_engines`, a candidate that runs the route's encoder models
    gets the same ones, loaded once; the candidates of several routes share one LLM engine
    where their LLM settings are equal (its tasks are named by input topic, so the routes'
    own LLM engine, which holds the same topics' live prompts, is never a candidate's)."""
    shared: dict = {}
    if factory is load_engines:
        factory = partial(load_engines, shared=shared)
    engine = inference_thread.call(load_engine, factory, settings, telemetry)
    for key in [k for k in shared if k[0] == "llm"]:
        del shared[key]
    candidates = {r.input: inference_thread.call(load_engine, factory, settings.candidate_settings(r), telemetry)
                  for r in settings.topics if r.candidate is not None}
    return engine, candidates


def load_engines(settings: Settings, telemetry: Telemetry | None = None, *,
                 shared: dict | None = None) -> Engine:
    """The engines the configured topics need: the encoder models when a topic takes its
    entities or label from them, the LLM when one takes anything from it (each topic's grammar
    and prompt prepared here, at start-up, from the JSON Schema of its field record). `telemetry`
    counts the LLM's dropped spans and ungrounded values. `shared`: engines already loaded, by
    their settings, reused and added to (`load_all` says which may be shared)."""
    from .engine import EncoderEngine  # torch: imported when the models load, not with the app
    from .engine.topics import TopicEngines

    plans = topic_plans(settings)
    encoder = llm = None
    if any(p.uses_encoder for p in plans.values()):
        options = dict(cache_dir=settings.model_cache, device=settings.device, max_batch=settings.model_batch,
                       max_tokens=settings.max_tokens_per_pass, model_version=settings.model_version,
                       overlap_tokenization=settings.overlap_tokenization, quantize=settings.quantize,
                       precision=settings.precision)
        key = ("encoder", repr((settings.engine, settings.ner_model, settings.classifier_model,
                                sorted(options.items()))))
        encoder = (shared or {}).get(key)
        if encoder is None:
            encoder = NoopEngine() if settings.engine == "noop" else \
                EncoderEngine.load(settings.ner_model, settings.classifier_model, **options)
        if shared is not None:
            shared[key] = encoder
    if any(p.uses_llm for p in plans.values()):
        key = ("llm", repr(sorted(settings.model_dump(include=LLM_SETTINGS).items())))
        llm = (shared or {}).get(key) or load_llm(settings, telemetry)
        if shared is not None:
            shared[key] = llm
        for plan in plans.values():
            if plan.uses_llm:
                prepared = llm.add_task(llm_task(plan, settings))
                log.info("LLM task for %s prepared in %.1fs (prompt prefix %d tokens)", plan.topic,
                         prepared.compile_seconds, len(prepared.prefix_ids))
    if llm is None:  # no LLM anywhere: the encoder engine as before
        return encoder if encoder is not None else NoopEngine()
    return TopicEngines(plans, encoder, llm)


def topic_plans(settings: Settings) -> dict[str, TopicPlan]:
    """Per input topic, which engine does what, with the JSON Schema of its field record."""
    from .engine.topics import TopicPlan
    from .serde.fields import load_field_schema

    return {r.input: TopicPlan(r.input, LabelSet.from_mapping(r.labels), r.entities_from, r.label_from,
                               load_field_schema(settings.schema_dir, r.fields) if r.fields else None)
            for r in settings.topics}


def llm_task(plan: TopicPlan, settings: Settings) -> LLMTask:
    """What the LLM is asked for on a topic that uses it: the label (label_from llm), the
    entities (entities_from llm), the typed fields."""
    from .engine.llm import LLMTask

    return LLMTask(plan.topic, plan.labels if plan.label_from == "llm" else None,
                   tuple(settings.llm_entity_types) if plan.entities_from == "llm" else None, plan.fields)


def load_llm(settings: Settings, telemetry: Telemetry | None = None, **overrides) -> LLMEngine:
    """The LLM engine with the configured model and options (`overrides` for the bench)."""
    from .engine.llm import LLMEngine

    options = dict(device=settings.device, dtype=settings.llm_dtype,
                   max_new_tokens=settings.llm_max_new_tokens,
                   retry_max_new_tokens=settings.llm_retry_max_new_tokens,
                   max_batch=settings.llm_batch, max_tokens=settings.llm_max_tokens_per_pass,
                   few_shot=settings.llm_few_shot, prefix_cache=settings.llm_prefix_cache,
                   max_string_chars=settings.llm_max_string_chars or None,
                   max_entities=settings.llm_max_entities or None,
                   max_entity_chars=settings.llm_max_entity_chars or None,
                   max_input_tokens=settings.llm_max_input_tokens)
    if settings.llm_examples_dir is not None:
        options["examples_dir"] = settings.llm_examples_dir
    if telemetry is not None:
        options["on_dropped_spans"] = telemetry.metrics.record_llm_dropped_spans
        options["on_ungrounded"] = telemetry.metrics.record_llm_ungrounded_value
    options.update(overrides)
    return LLMEngine.load(settings.llm_model, cache_dir=settings.model_cache, **options)
