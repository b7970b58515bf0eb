"""Every engine offers the whole `Engine` protocol (the runtime calls it without probing for
attributes), and the engine package imports nothing of Kafka, Faust, Avro or serde."""

from __future__ import annotations

import ast
from pathlib import Path

from streams.engine import EncoderEngine, Engine, LabelSet, NoopEngine
from streams.engine.topics import TopicEngines, TopicPlan

ENGINE_DIR = Path(__file__).resolve().parents[2] / "streams" / "engine"
LABELS = LabelSet.from_mapping({"billing": "a charge", "delivery": "a parcel"})
MEMBERS = ("device", "load_seconds", "runs_models", "models", "progress_at", "models_for", "prompt_for",
           "warm_up", "infer", "max_events_for", "close")


def check(engine) -> None:
    assert isinstance(engine, Engine)
    assert all(hasattr(engine, name) for name in MEMBERS)
    [result] = engine.infer(["My parcel has not arrived."], LABELS, "notes")
    assert result.classification.label in LABELS.labels
    assert engine.models_for("notes") and engine.max_events_for("notes", 10.0) is None
    assert engine.prompt_for("notes") is None  # no LLM on the topic: no prompt to stamp
    assert engine.warm_up() >= 0.0
    engine.close()


def test_the_noop_engine():
    check(NoopEngine())
    assert NoopEngine().runs_models is False and NoopEngine().progress_at is None


def test_the_encoder_engine(tiny_models, tmp_path):
    engine = EncoderEngine.load(str(tiny_models["ner"]), str(tiny_models["encoder"]), cache_dir=tmp_path,
                                device="cpu")
    check(engine)
    assert engine.runs_models and engine.progress_at is None


def test_topic_engines_without_an_llm():
    engines = TopicEngines({"notes": TopicPlan("notes", LABELS, "encoder", "encoder", None)}, NoopEngine())
    check(engines)
    assert not engines.runs_models  # nothing but the no-op engine: called in place


def imports(path: Path) -> set[str]:
    """The modules a file imports, relative imports resolved against streams.engine."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ["streams", "engine"][: 2 - (node.level - 1)] if node.level else []
            found.add(".".join([*base, *([node.module] if node.module else [])]))
    return found


def test_the_engine_imports_nothing_of_kafka_faust_avro_or_serde():
    outside = {"confluent_kafka", "faust", "aiokafka", "mode", "fastavro"}
    for path in ENGINE_DIR.glob("*.py"):
        for name in imports(path):
            top = name.split(".")[0]
            assert top not in outside, (path.name, name)
            assert top != "streams" or name.startswith("streams.engine"), (path.name, name)
