"""Opt-in int8 dynamic quantization (STREAMS_QUANTIZE=int8) for CPU-only deployments, and the
agreement figures `streams bench` prints for it."""

from __future__ import annotations

import pytest
import torch

from bench.encoder import agreement
from streams.engine import Classification, EncoderEngine, Entity, Inference, ModelLoadError
from tests.engine.test_engine_tiny import LABELS, SHORT, check, long_text


def test_int8_replaces_linear_layers_and_marks_the_version(tiny_models, tmp_path):
    full = EncoderEngine.load(str(tiny_models["ner"]), str(tiny_models["encoder"]), cache_dir=tmp_path, device="cpu")
    int8 = EncoderEngine.load(str(tiny_models["ner"]), str(tiny_models["encoder"]), cache_dir=tmp_path,
                       device="cpu", quantize="int8")
    dynamic_linear = torch.ao.nn.quantized.dynamic.Linear
    for model in (int8.extractor.model, int8.classifier.model):
        kinds = {type(m) for m in model.modules()}
        assert dynamic_linear in kinds and torch.nn.Linear not in kinds
    assert not any(isinstance(m, dynamic_linear) for m in full.extractor.model.modules())
    # the extractor's pipeline helpers hold the same (quantized) model object
    assert int8.extractor._pipeline.model is int8.extractor.model
    assert [m.version for m in int8.models] == [f"{m.version}+int8" for m in full.models]
    texts = SHORT + [long_text(600)]
    check(texts, int8.infer(texts, LABELS))


def test_unknown_quantization_is_refused(tiny_models, tmp_path):
    with pytest.raises(ModelLoadError, match="none or int8"):
        EncoderEngine.load(str(tiny_models["ner"]), str(tiny_models["encoder"]), cache_dir=tmp_path,
                    device="cpu", quantize="int4")


def inference(label: str, *spans: tuple[str, int, int]) -> Inference:
    return Inference([Entity(lab, "x", s, e, 0.9) for lab, s, e in spans],
                     Classification(label, 0.9, {label: 0.9}))


def test_agreement_counts_labels_exact_spans_and_f1():
    full = [inference("billing", ("EMAIL", 0, 5), ("CITY", 10, 16)),
            inference("delivery", ("GIVEN_NAME", 0, 4)),
            inference("gift"),
            inference("gift", ("ZIP_CODE", 3, 8))]
    other = [inference("billing", ("EMAIL", 0, 5), ("CITY", 10, 16)),   # same
             inference("billing", ("GIVEN_NAME", 0, 5)),                  # label and span differ
             inference("gift"),                                           # same, no entities
             inference("gift", ("ZIP_CODE", 3, 8), ("CITY", 9, 12))]      # one extra span
    a = agreement(full, other)
    assert a["labels"] == 0.75
    assert a["entities_exact"] == 0.5
    # truth 4 spans, found 4 of which 3 right: tp 3, one missed + two wrong -> 2*3 / (6 + 3)
    assert a["entities_f1"] == pytest.approx(6 / 9)
    assert agreement(full, full) == {"labels": 1.0, "entities_exact": 1.0, "entities_f1": 1.0, "texts": 4}
