"""Pipelined forward passes, tokenization overlapped with the entity model, and the start-up
warm-up: each is a schedule change only, so results must not move."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
import torch

from streams.engine import EncoderEngine, LabelSet
from streams.engine import classify as classify_module
from streams.engine.batching import Window, forward_batches, largest_shapes, length_batches, pad
from tests.engine.test_engine_tiny import LABELS, SHORT, long_text

# Short notes and long tickets (several 64-token windows each), shuffled.
MIXED = [SHORT[0], long_text(400, seed=5), SHORT[1], long_text(40, seed=6), SHORT[2],
         long_text(150, seed=7), "gift wrap please", long_text(25, seed=8), "hello", long_text(90, seed=9)]


def load(tiny_models, tmp_path, classifier: str = "encoder", **kwargs) -> EncoderEngine:
    return EncoderEngine.load(str(tiny_models["ner"]), str(tiny_models[classifier]), cache_dir=tmp_path,
                       device="cpu", **kwargs)


def exact(results) -> list:
    """Everything an Inference holds, scores included, for exact comparison."""
    return [([(e.label, e.text, e.start, e.end, e.score) for e in r.entities],
             (r.classification.label, r.classification.score, list(r.classification.scores.items())))
            for r in results]


def spy_forward(model, calls: list) -> None:
    """Records the input shape of every forward pass of `model`."""
    forward = model.forward

    def recording(*args, **kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    model.forward = recording


# (a) Tokenization in a background thread while the entity model runs.

@pytest.mark.parametrize("classifier", ["encoder", "seqcls"])
def test_overlapped_tokenization_gives_the_same_results(tiny_models, tmp_path, classifier):
    serial = load(tiny_models, tmp_path, classifier, overlap_tokenization=False)
    overlapped = load(tiny_models, tmp_path, classifier, overlap_tokenization=True)
    try:
        assert (serial.overlap_tokenization, overlapped.overlap_tokenization) == (False, True)
        threads: list[str] = []
        tokenize = overlapped.classifier.tokenize
        overlapped.classifier.tokenize = lambda texts: threads.append(threading.current_thread().name) \
            or tokenize(texts)
        labels = LabelSet.from_mapping({"billing": "charged twice", "delivery": "parcel not arrived",
                                        "other": "hello"})  # a new set: its descriptions are embedded now
        for texts in (MIXED, MIXED[::-1], MIXED[3:4]):
            want, got = serial.infer(texts, labels), overlapped.infer(texts, labels)
            assert exact(got) == exact(want)
            assert sum(len(r.entities) for r in want) > 0
        assert len(threads) == 3 and all(name.startswith("tokenize") for name in threads)
        if classifier == "encoder":  # the label descriptions were embedded as before
            assert np.array_equal(overlapped.classifier._label_cache[labels],
                                  serial.classifier._label_cache[labels])
    finally:
        overlapped.close()


def test_overlap_is_automatic_only_for_cuda(tiny_models, tmp_path):
    assert load(tiny_models, tmp_path).overlap_tokenization is False  # CPU: torch already uses every core
    forced = load(tiny_models, tmp_path, overlap_tokenization=True)
    assert forced.overlap_tokenization is True
    forced.close()


def test_overlapped_classifier_uses_the_windows_it_is_given(tiny_models, tmp_path):
    """The classifier reads the background thread's windows: it does not tokenize again."""
    engine = load(tiny_models, tmp_path, overlap_tokenization=True)
    try:
        engine.infer(SHORT, LABELS)  # label descriptions embedded (tokenized on this thread)
        on_this_thread: list[int] = []
        tokenize_windows = classify_module.tokenize_windows

        def counting(tokenizer, texts, *args):
            if threading.current_thread() is threading.main_thread():
                on_this_thread.append(len(texts))
            return tokenize_windows(tokenizer, texts, *args)

        classify_module.tokenize_windows = counting
        try:
            engine.infer(MIXED, LABELS)
        finally:
            classify_module.tokenize_windows = tokenize_windows
        assert on_this_thread == []
    finally:
        engine.close()


def test_a_failure_during_the_entity_pass_leaves_the_engine_usable(tiny_models, tmp_path):
    engine = load(tiny_models, tmp_path, overlap_tokenization=True)
    try:
        want = exact(engine.infer(MIXED, LABELS))
        extract = engine.extractor.extract
        engine.extractor.extract = lambda texts: (_ for _ in ()).throw(RuntimeError("out of memory"))
        with pytest.raises(RuntimeError, match="out of memory"):
            engine.infer(MIXED, LABELS)
        engine.extractor.extract = extract
        assert exact(engine.infer(MIXED, LABELS)) == want
    finally:
        engine.close()


# (b) Forward passes pipelined: batch k+1 launched before batch k is post-processed.

def test_forward_batches_launches_the_next_batch_before_yielding(tiny_models):
    rng = random.Random(3)
    windows = [Window(0, [rng.randint(5, 150) for _ in range(rng.randint(2, 40))], [], [])
               for _ in range(23)]
    batches = list(length_batches(windows, 4, 10_000))
    assert len(batches) == 6
    events: list[tuple[str, int]] = []
    weights = torch.randn(151, 3)

    def forward(inputs):
        events.append(("forward", len(events)))
        return weights[inputs["input_ids"]].sum(1) * inputs["attention_mask"].sum(1, keepdim=True)

    got = []
    for batch, out in forward_batches(windows, iter(batches), forward, 0, torch.device("cpu")):
        events.append(("yield", len(got)))
        got.append((batch, out))
    order = [kind for kind, _ in events]
    assert order == ["forward", "forward"] + ["yield", "forward"] * 4 + ["yield", "yield"]
    for (batch, out), want_batch in zip(got, batches):  # one batch at a time, unpipelined
        assert batch == want_batch
        want = forward(pad([windows[i] for i in batch], 0, torch.device("cpu"))).float().numpy()
        assert out.dtype == np.float32 and np.array_equal(out, want)


@pytest.mark.parametrize("classifier", ["encoder", "seqcls"])
def test_pipelined_batches_equal_one_text_at_a_time(tiny_models, tmp_path, classifier):
    many = load(tiny_models, tmp_path, classifier, max_batch=3)  # many batches per call
    alone = load(tiny_models, tmp_path, classifier, max_batch=1)  # one window per forward pass
    calls: list[tuple[int, int]] = []
    spy_forward(many.extractor.model, calls)
    together = many.infer(MIXED, LABELS)
    assert len(calls) >= 8 and max(rows for rows, _ in calls) == 3
    for text, got in zip(MIXED, together):
        [want] = alone.infer([text], LABELS)
        assert [(e.label, e.start, e.end) for e in got.entities] == \
            [(e.label, e.start, e.end) for e in want.entities]
        assert [e.score for e in got.entities] == pytest.approx([e.score for e in want.entities], abs=1e-5)
        assert got.classification.label == want.classification.label
        assert got.classification.scores == pytest.approx(want.classification.scores, abs=1e-5)
    assert sum(len(r.entities) for r in together) > 10


def test_classifier_forward_passes_are_pipelined(tiny_models, tmp_path, monkeypatch):
    engine = load(tiny_models, tmp_path, "seqcls", max_batch=2)
    events: list[str] = []
    spy_forward(engine.classifier.model, events)
    real = classify_module.forward_batches

    def recording(*args):
        for item in real(*args):
            events.append("yield")
            yield item

    monkeypatch.setattr(classify_module, "forward_batches", recording)
    engine.classifier.classify(MIXED)
    kinds = ["yield" if e == "yield" else "forward" for e in events]
    assert kinds[:3] == ["forward", "forward", "yield"] and kinds[-2:] == ["yield", "yield"]
    assert kinds.count("forward") == kinds.count("yield") > 4


# (c) Warm-up on the largest shapes the batching can produce.

def test_largest_shapes_bound_every_batch():
    assert largest_shapes(32, 8192, 512) == [(16, 512), (32, 256)]
    assert largest_shapes(32, 8192, 256) == [(32, 256)]  # one shape is both
    assert largest_shapes(4, 100, 512) == [(1, 512), (4, 25)]  # a window over the cap still runs alone
    rng = random.Random(11)
    for max_batch, max_tokens, max_length in [(8, 256, 64), (32, 8192, 512), (5, 100, 64), (3, 1000, 128)]:
        shapes = largest_shapes(max_batch, max_tokens, max_length)
        windows = [Window(0, [1] * rng.randint(1, max_length), [], []) for _ in range(300)]
        windows.append(Window(0, [1] * max_length, [], []))
        for batch in length_batches(windows, max_batch, max_tokens):
            rows, longest = len(batch), max(len(windows[i].input_ids) for i in batch)
            assert rows <= max(r for r, _ in shapes) and longest <= max(t for _, t in shapes)
            assert rows * longest <= max(r * t for r, t in shapes)


def test_warm_up_runs_the_largest_shapes_and_changes_nothing(tiny_models, tmp_path):
    engine = load(tiny_models, tmp_path, max_batch=4, max_tokens=128)
    before = exact(engine.infer(MIXED, LABELS))
    ner_calls: list[tuple[int, int]] = []
    cls_calls: list[tuple[int, int]] = []
    spy_forward(engine.extractor.model, ner_calls)
    spy_forward(engine.classifier.model, cls_calls)
    loaded = engine.load_seconds
    seconds = engine.warm_up(largest=True)
    assert seconds > 0 and engine.load_seconds == pytest.approx(loaded + seconds)
    # tiny models: 64-token windows; 128 tokens -> 2 windows of 64, or 4 of 32
    assert ner_calls == [(2, 64), (4, 32)] and cls_calls == [(2, 64), (4, 32)]
    assert exact(engine.infer(MIXED, LABELS)) == before


def test_warm_up_on_cpu_is_one_small_pass_per_model(tiny_models, tmp_path):
    engine = load(tiny_models, tmp_path, "seqcls")
    calls: list[tuple[int, int]] = []
    spy_forward(engine.extractor.model, calls)
    spy_forward(engine.classifier.model, calls)
    before = exact(engine.infer(MIXED, None))
    calls.clear()
    engine.warm_up()
    assert calls == [(1, 16), (1, 16)]
    assert exact(engine.infer(MIXED, None)) == before
