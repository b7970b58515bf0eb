"""Length-sorted, token-capped batches and overlapping windows over long texts."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from streams.engine.batching import Window, length_batches, tokenize_windows


def window(length: int, text_index: int = 0) -> Window:
    return Window(text_index, [1] * length, [(0, 0)] * length, [0] * length)


@pytest.fixture(scope="module")
def windows() -> list[Window]:
    rng = random.Random(7)
    return [window(rng.randint(3, 64)) for _ in range(100)]


@pytest.mark.parametrize("max_batch, max_tokens", [(32, 8192), (8, 8192), (32, 256), (5, 100)])
def test_length_batches(windows, max_batch, max_tokens):
    batches = list(length_batches(windows, max_batch, max_tokens))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(windows)))  # every index exactly once
    lengths = [len(windows[i].input_ids) for i in flat]
    assert lengths == sorted(lengths)
    for b in batches:
        assert len(b) <= max_batch
        assert len(b) * max(len(windows[i].input_ids) for i in b) <= max_tokens  # padded tokens
    if max_tokens == 8192:  # only max_batch cuts: batches are full but the last
        assert [len(b) for b in batches[:-1]] == [max_batch] * (len(batches) - 1)


def test_window_longer_than_the_cap_goes_alone():
    ws = [window(10), window(300), window(20)]
    assert list(length_batches(ws, 32, 100)) == [[0, 2], [1]]


def test_no_windows_no_batches():
    assert list(length_batches([], 4, 100)) == []


def test_long_text_becomes_overlapping_windows(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["ner"])
    long = " ".join(f"hello maria {i} parcel" for i in range(100))
    short = "thanks denver"
    ws = tokenize_windows(tok, [short, long], max_length=32, stride=8)
    assert [w.text_index for w in ws[:1]] == [0] and len(ws) > 5
    mine = [w for w in ws if w.text_index == 1]
    assert len(mine) == len(ws) - 1
    spans = []
    for w in mine:
        assert len(w.input_ids) <= 32
        content = [o for o, special in zip(w.offsets, w.special_mask) if not special]
        for start, end in content:  # offsets index the original text
            assert 0 <= start < end <= len(long)
            assert long[start:end].strip() == long[start:end]
        spans.append(content)
    for prev, nxt in zip(spans, spans[1:]):
        assert prev[-8:] == nxt[:8]  # consecutive windows share `stride` tokens
    assert spans[-1][-1][1] == len(long)  # the last window reaches the end of the text


def test_each_batch_knows_the_rows_its_length_allows():
    """The batch fill's denominator: max_batch, or fewer where the token cap allows fewer."""
    ws = [window(10), window(10), window(10), window(50), window(300)]
    batches = list(length_batches(ws, 4, 100))
    assert batches == [[0, 1, 2], [3], [4]]
    assert [b.capacity for b in batches] == [4, 2, 1]  # 100 // 10 = 10 > 4; 100 // 50; one alone


def test_forward_passes_report_their_fill_inside_an_inference_call(monkeypatch):
    """One value per pass, rows over capacity, to the inference thread; a warm-up's own
    batches (plain lists) and calls outside an `infer` call report nothing."""
    import torch

    from streams.engine import batching
    from streams.engine.thread import InferenceThread

    runner = InferenceThread("test-fill-forward")
    fills: list = []
    runner.on_batch_fill = lambda fill, engine: fills.append((fill, engine))
    monkeypatch.setattr(batching, "inference_thread", runner)
    ws = [window(4) for _ in range(10)]

    def run(batches):
        forward = lambda inputs: inputs["input_ids"].float()  # noqa: E731
        return [b for b, _ in batching.forward_batches(ws, batches, forward, 0, torch.device("cpu"))]

    assert runner.infer(run, length_batches(ws, 4, 1000)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert fills == [(1.0, "encoder"), (1.0, "encoder"), (0.5, "encoder")]
    fills.clear()
    runner.infer(run, iter([list(range(10))]))  # warm_up_forward's batches
    runner.call(run, length_batches(ws, 4, 1000))  # warm-up: `call`, not `infer`
    assert fills == []
