"""Classification: zero-shot by embedding similarity (any sentence-embedding encoder, per-topic
labels), or a fine-tuned sequence-classification head (the model's own labels).

Long texts are cut into the same overlapping windows as for entities; the windows are combined
by a token-count-weighted mean (of embeddings, or of logits), so every part of the text counts
in proportion to its length."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from .batching import Window, forward_batches, length_batches, tokenize_windows, warm_up_forward
from .ner import _max_length
from .types import Classification, LabelSet


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _result(labels: list[str], probs: np.ndarray) -> Classification:
    order = np.argsort(-probs)
    scores = {labels[i]: float(probs[i]) for i in order}
    best = int(order[0])
    return Classification(labels[best], float(probs[best]), scores)


class _WindowedEncoder:
    """Shared: windows -> length-sorted batches -> one pooled vector per text."""

    def __init__(self, tokenizer, model, device, max_length, max_batch, max_tokens, stride=32):
        self.tokenizer, self.model, self.device = tokenizer, model, device
        self.max_length, self.max_batch, self.max_tokens = max_length, max_batch, max_tokens
        self.stride = min(stride, max_length // 4)

    def tokenize(self, texts: Sequence[str]) -> list[Window]:
        """The windows `pooled` would make of `texts`. Uses only this encoder's tokenizer, so
        it may run in another thread while the other model works (Engine.infer)."""
        return tokenize_windows(self.tokenizer, texts, self.max_length, self.stride)

    @torch.inference_mode()
    def pooled(self, texts: Sequence[str], forward, windows: Sequence[Window] | None = None) -> np.ndarray:
        """One vector per text; `windows`: `tokenize(texts)` made beforehand, else made here."""
        if windows is None:
            windows = self.tokenize(texts)
        sums: list[np.ndarray | None] = [None] * len(texts)
        weights = np.zeros(len(texts))
        batches = length_batches(windows, self.max_batch, self.max_tokens)
        # The next batch's forward pass is already launched while this one is accumulated.
        for batch, vectors in forward_batches(windows, batches, forward,
                                              self.tokenizer.pad_token_id or 0, self.device):
            for i, vec in zip(batch, vectors):
                window = windows[i]
                w = len(window.input_ids)
                t = window.text_index
                sums[t] = vec * w if sums[t] is None else sums[t] + vec * w
                weights[t] += w
        return np.stack(sums) / weights[:, None]

    def warm_up(self, forward, largest: bool = True) -> None:
        """One forward pass per extreme batch shape (see Engine.warm_up)."""
        warm_up_forward(forward, self.tokenizer.pad_token_id or 0, self.device,
                        self.max_batch, self.max_tokens, self.max_length, largest)


class ZeroShotClassifier:
    """Cosine similarity between the text and each label's description, softmaxed with a
    temperature so the scores read as a distribution over the topic's labels."""

    task = "classification"

    def __init__(self, model_dir: Path, device, dtype, *, max_batch=32, max_tokens=8192,
                 temperature: float = 0.05):
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModel.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        max_length = _max_length(tokenizer, model.config)
        st_config = Path(model_dir) / "sentence_bert_config.json"
        if st_config.exists():  # sentence-transformers' trained sequence length
            max_length = min(max_length, json.loads(st_config.read_text()).get("max_seq_length", max_length))
        self.model = model
        self.encoder = _WindowedEncoder(tokenizer, model, device, max_length, max_batch, max_tokens)
        self.temperature = temperature
        self._label_cache: dict[LabelSet, np.ndarray] = {}

    def _embed_batch(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.model(**inputs).last_hidden_state.float()  # pooled in fp32 whatever the model runs in
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean pooling

    def tokenize(self, texts: Sequence[str]) -> list[Window]:
        return self.encoder.tokenize(texts)

    def warm_up(self, largest: bool = True) -> None:
        self.encoder.warm_up(self._embed_batch, largest)

    def embed(self, texts: Sequence[str], windows: Sequence[Window] | None = None) -> np.ndarray:
        vectors = self.encoder.pooled(texts, self._embed_batch, windows)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)

    def classify(self, texts: Sequence[str], labels: LabelSet | None,
                 windows: Sequence[Window] | None = None) -> list[Classification]:
        """`windows`: `tokenize(texts)`, when it was made beforehand (Engine.infer)."""
        if labels is None or not labels.descriptions:
            raise ValueError("zero-shot classification needs a label set for the topic")
        if labels not in self._label_cache:  # label descriptions are embedded once per topic
            self._label_cache[labels] = self.embed([d for _, d in labels.descriptions])
        sims = self.embed(texts, windows) @ self._label_cache[labels].T
        probs = _softmax(sims / self.temperature)
        return [_result(labels.labels, p) for p in probs]


class SequenceClassifier:
    """A fine-tuned head: its own id2label, per-topic label sets are ignored."""

    task = "classification"

    def __init__(self, model_dir: Path, device, dtype, *, max_batch=32, max_tokens=8192):
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=dtype)
        self.model.to(device).eval()
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.encoder = _WindowedEncoder(tokenizer, self.model, device,
                                        _max_length(tokenizer, self.model.config), max_batch, max_tokens)

    def _logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**inputs).logits

    def tokenize(self, texts: Sequence[str]) -> list[Window]:
        return self.encoder.tokenize(texts)

    def warm_up(self, largest: bool = True) -> None:
        self.encoder.warm_up(self._logits, largest)

    def classify(self, texts: Sequence[str], labels: LabelSet | None = None,
                 windows: Sequence[Window] | None = None) -> list[Classification]:
        """`windows`: `tokenize(texts)`, when it was made beforehand (Engine.infer)."""
        logits = self.encoder.pooled(texts, self._logits, windows)
        return [_result(self.labels, p) for p in _softmax(logits)]
