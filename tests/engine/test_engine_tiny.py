"""The encoder engine end to end on tiny random models: shapes, offsets, long texts, batching
invariance, and the start-up errors a wrong model or device gives."""

from __future__ import annotations

import hashlib
import random
import shutil

import pytest
import torch

from streams.engine import EncoderEngine, LabelSet, ModelLoadError
from streams.engine.classify import SequenceClassifier, ZeroShotClassifier
from streams.engine.loading import choose_device
from tests.fixtures.tiny_models import WORDS

LABELS = LabelSet.from_mapping({"billing": "charged twice please refund",
                                "delivery": "the parcel has not arrived",
                                "gift": "gift wrap"})
SHORT = ["hello my name is maria gonzalez", "gift wrap", "the parcel has not arrived in denver"]


def long_text(words: int = 3000, seed: int = 1) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS + ["maria.gonzalez@example.com", "Denver"]) for _ in range(words))


@pytest.fixture(scope="module")
def zero_shot(tiny_models, tmp_path_factory) -> EncoderEngine:
    return EncoderEngine.load(str(tiny_models["ner"]), str(tiny_models["encoder"]),
                       cache_dir=tmp_path_factory.mktemp("cache"), device="cpu")


@pytest.fixture(scope="module")
def seqcls(tiny_models, tmp_path_factory) -> EncoderEngine:
    return EncoderEngine.load(str(tiny_models["ner"]), str(tiny_models["seqcls"]),
                       cache_dir=tmp_path_factory.mktemp("cache"), device="cpu")


def check(texts, results):
    assert len(results) == len(texts)
    for text, inference in zip(texts, results):
        c = inference.classification
        assert sum(c.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert c.label == max(c.scores, key=c.scores.get) and c.score == c.scores[c.label]
        assert list(c.scores.values()) == sorted(c.scores.values(), reverse=True)  # best first
        for e in inference.entities:
            assert 0 <= e.start < e.end <= len(text)
            assert e.text == text[e.start:e.end]
            assert 0.0 <= e.score <= 1.0
        starts = [e.start for e in inference.entities]
        assert starts == sorted(starts)


def test_kinds_of_classifier(zero_shot, seqcls):
    assert isinstance(zero_shot.classifier, ZeroShotClassifier)
    assert isinstance(seqcls.classifier, SequenceClassifier)


def test_zero_shot_infer(zero_shot):
    results = zero_shot.infer(SHORT, LABELS)
    check(SHORT, results)
    assert all(set(r.classification.scores) == set(LABELS.labels) for r in results)
    assert zero_shot.infer([], LABELS) == []


def test_sequence_classifier_uses_its_own_labels(seqcls):
    results = seqcls.infer(SHORT, None)
    check(SHORT, results)
    assert all(set(r.classification.scores) == {"negative", "positive"} for r in results)


def test_zero_shot_needs_labels(zero_shot):
    with pytest.raises(ValueError):
        zero_shot.infer(SHORT, None)


@pytest.mark.parametrize("engine_name", ["zero_shot", "seqcls"])
def test_long_text_beyond_the_model_limit(engine_name, request):
    engine = request.getfixturevalue(engine_name)
    text = long_text()
    first_window_end = max(e for _, e in engine.extractor.tokenizer(
        text, truncation=True, max_length=engine.extractor.max_length,
        return_offsets_mapping=True)["offset_mapping"])
    [result] = engine.infer([text], LABELS)
    check([text], [result])
    assert max(e.start for e in result.entities) > first_window_end  # later windows are read


@pytest.mark.parametrize("engine_name", ["zero_shot", "seqcls"])
def test_batching_does_not_change_results(engine_name, request):
    engine = request.getfixturevalue(engine_name)
    texts = [SHORT[1], long_text(800, seed=2), SHORT[0], long_text(60, seed=3), SHORT[2]]
    together = engine.infer(texts, LABELS)
    for text, batched in zip(texts, together):
        [alone] = engine.infer([text], LABELS)
        assert [(e.label, e.start, e.end) for e in alone.entities] == \
            [(e.label, e.start, e.end) for e in batched.entities]
        assert [e.score for e in alone.entities] == pytest.approx([e.score for e in batched.entities], abs=1e-4)
        assert alone.classification.label == batched.classification.label
        assert alone.classification.scores == pytest.approx(batched.classification.scores, abs=1e-4)


def test_small_token_cap_gives_same_results(tiny_models, tmp_path, zero_shot):
    capped = EncoderEngine.load(str(tiny_models["ner"]), str(tiny_models["encoder"]), cache_dir=tmp_path,
                         device="cpu", max_batch=3, max_tokens=128)
    texts = SHORT + [long_text(300)]
    for a, b in zip(capped.infer(texts, LABELS), zero_shot.infer(texts, LABELS)):
        assert [(e.label, e.start, e.end) for e in a.entities] == [(e.label, e.start, e.end) for e in b.entities]
        assert a.classification.scores == pytest.approx(b.classification.scores, abs=1e-4)


def test_model_names_and_versions(zero_shot, tiny_models):
    ner, clf = zero_shot.models
    assert (ner.task, ner.name, clf.task, clf.name) == ("entities", "tiny-ner", "classification", "tiny-encoder")
    digest = hashlib.sha256((tiny_models["ner"] / "model.safetensors").read_bytes()).hexdigest()
    assert ner.version == f"sha256:{digest[:12]}"
    assert ner.version != clf.version


def test_model_version_override(tiny_models, tmp_path):
    engine = EncoderEngine.load(str(tiny_models["ner"]), str(tiny_models["seqcls"]), cache_dir=tmp_path,
                         model_version="release-7")
    assert [m.version for m in engine.models] == ["release-7", "release-7"]


def test_missing_model_directory(tiny_models, tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        EncoderEngine.load(str(tmp_path / "nowhere"), str(tiny_models["encoder"]), cache_dir=tmp_path)


def test_directory_without_config(tiny_models, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["encoder"], broken)
    (broken / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="config.json"):
        EncoderEngine.load(str(tiny_models["ner"]), str(broken), cache_dir=tmp_path)


def test_wrong_architecture(tiny_models, tmp_path):
    with pytest.raises(ModelLoadError, match="token-classification"):
        EncoderEngine.load(str(tiny_models["seqcls"]), str(tiny_models["encoder"]), cache_dir=tmp_path)
    with pytest.raises(ModelLoadError, match="ForTokenClassification"):
        EncoderEngine.load(str(tiny_models["ner"]), str(tiny_models["ner"]), cache_dir=tmp_path)


def test_choose_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto") == torch.device("cpu")
    assert choose_device("cpu") == torch.device("cpu")
    with pytest.raises(ModelLoadError, match="no CUDA"):
        choose_device("cuda")
    with pytest.raises(ModelLoadError, match="not a torch device"):
        choose_device("gpu-please")
