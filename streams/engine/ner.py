"""Entity extraction with any transformers token-classification model.

The forward passes are ours (batched, length-sorted, windowed); turning per-token scores into
entities reuses the transformers pipeline's own "first" aggregation and its resolution of
overlapping windows, so our spans equal what the model's pipeline gives for the same text
(tests/engine/test_equivalence.py)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer, TokenClassificationPipeline
from transformers.utils import logging as hf_logging

from .batching import Window, forward_batches, length_batches, tokenize_windows, warm_up_forward
from .types import Entity

# Labels whose pieces are merged only when they touch (no whitespace between): two emails
# separated by a space are two emails; "New York" or "555 0132" are one entity. An email's
# "@" is sometimes tagged O between two EMAIL pieces: that gap is bridged too.
_TOUCH_ONLY = {"EMAIL", "URL"}


def merge_adjacent(text: str, entities: list[Entity]) -> list[Entity]:
    """Merge neighbouring pieces of the same label (Rampart tags each sub-word B-, so an email
    arrives as 'maria.', 'gonzalez@', 'example', '.', 'com'). Score: mean of the pieces."""
    merged: list[Entity] = []
    counts: list[int] = []
    for ent in entities:
        if merged and merged[-1].label == ent.label and ent.start >= merged[-1].end:
            gap = text[merged[-1].end : ent.start]
            if (gap == "" or (gap == "@" and ent.label == "EMAIL")
                    or (gap.isspace() and len(gap) <= 1 and ent.label not in _TOUCH_ONLY)):
                prev, n = merged[-1], counts[-1]
                merged[-1] = Entity(prev.label, text[prev.start : ent.end], prev.start, ent.end,
                                    (prev.score * n + ent.score) / (n + 1))
                counts[-1] = n + 1
                continue
        merged.append(ent)
        counts.append(1)
    return merged


class EntityExtractor:
    task = "entities"

    def __init__(self, model_dir, device: torch.device, dtype: torch.dtype, *, max_batch: int = 32,
                 max_tokens: int = 8192, stride: int = 64):
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForTokenClassification.from_pretrained(model_dir, dtype=dtype)
        self.model.to(device).eval()
        self.device = device
        self.max_length = _max_length(self.tokenizer, self.model.config)
        self.stride = min(stride, self.max_length // 4)
        self.max_batch = max_batch
        self.max_tokens = max_tokens
        # Only its aggregation helpers are used; it never runs a forward pass. Its "Device set
        # to use" warning is not one: the worker logs the device it loaded the models on.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            self._pipeline = TokenClassificationPipeline(model=self.model, tokenizer=self.tokenizer,
                                                         device=device)
        finally:
            hf_logging.set_verbosity(verbosity)
        self._prepare_aggregation()

    def _prepare_aggregation(self) -> None:
        """Per label id: its tag (B-/I- stripped) and whether it begins an entity; per token id:
        its length in characters when the tokenizer marks word pieces ("##"), as the pipeline's
        word test needs."""
        id2label = self.model.config.id2label
        names = [id2label[i] for i in range(len(id2label))]
        bare = [n[2:] if n.startswith(("B-", "I-")) else n for n in names]
        self._tags = list(dict.fromkeys(bare))
        self._tag_of = np.array([self._tags.index(b) for b in bare])
        self._is_begin = np.array([n.startswith("B-") for n in names])
        self._unk_id = self.tokenizer.unk_token_id
        self._token_chars = None
        backend = getattr(self.tokenizer, "_tokenizer", None)
        if backend is not None and getattr(backend.model, "continuing_subword_prefix", None):
            tokens = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
            self._token_chars = np.array([len(t) for t in tokens])

    def _forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**inputs).logits

    @torch.inference_mode()
    def extract(self, texts: Sequence[str]) -> list[list[Entity]]:
        windows = tokenize_windows(self.tokenizer, texts, self.max_length, self.stride)
        per_window: list[list[dict]] = [[] for _ in windows]
        batches = length_batches(windows, self.max_batch, self.max_tokens)
        # The next batch's forward pass is already launched while this one is post-processed.
        for batch, logits in forward_batches(windows, batches, self._forward,
                                             self.tokenizer.pad_token_id or 0, self.device):
            for i, window_logits in zip(batch, logits):
                per_window[i] = self._window_entities(texts[windows[i].text_index], windows[i], window_logits)
        # Windows come back in length order; regroup them per text, in text order.
        per_text: list[list[list[dict]]] = [[] for _ in texts]
        for window, found in zip(windows, per_window):
            per_text[window.text_index].append(found)
        return [self._combine(text, parts) for text, parts in zip(texts, per_text)]

    def warm_up(self, largest: bool = True) -> None:
        """One forward pass per extreme batch shape (see Engine.warm_up)."""
        warm_up_forward(self._forward, self.tokenizer.pad_token_id or 0, self.device,
                        self.max_batch, self.max_tokens, self.max_length, largest)

    def _window_entities(self, text: str, window: Window, logits: np.ndarray) -> list[dict]:
        """The pipeline's "first" aggregation for one window, in numpy (the pipeline itself
        walks every token in Python, a tenth of the CPU time of a batch of tickets): words are a
        first token and its "##" pieces, a word takes its first token's label and score, and
        neighbouring words of one tag join unless the later one is a B- (a Rampart word always
        is: `merge_adjacent` then joins the pieces). Same spans and scores as the pipeline's
        (tests/engine/test_equivalence.py)."""
        n = len(window.input_ids)
        ids = np.asarray(window.input_ids)
        offsets = np.asarray(window.offsets, dtype=np.int64).reshape(n, 2)
        kept = np.flatnonzero(np.asarray(window.special_mask) == 0)
        if not kept.size:
            return []
        ids, starts, ends = ids[kept], offsets[kept, 0], offsets[kept, 1]
        rows = logits[kept]
        best = rows.argmax(axis=-1)
        # softmax probability of the best label: 1 / sum(exp(logit - max))
        score = 1.0 / np.exp(rows - rows.max(axis=-1, keepdims=True)).sum(axis=-1)
        if self._token_chars is not None:  # a word-aware tokenizer: a piece is shorter than its token
            subword = (self._token_chars[ids] != ends - starts) & (ids != self._unk_id)
        else:  # the pipeline's fallback: no space before the token
            subword = np.array([s > 0 and " " not in text[s - 1 : s + 1] for s in starts.tolist()], dtype=bool)
        subword[0] = False
        word_first = np.flatnonzero(~subword)
        word_last = np.append(word_first[1:] - 1, len(ids) - 1)
        label = best[word_first]
        word_score = score[word_first]
        tag, begins = self._tag_of[label], self._is_begin[label]
        new_group = np.ones(len(label), dtype=bool)
        new_group[1:] = begins[1:] | (tag[1:] != tag[:-1])
        group_first = np.flatnonzero(new_group)
        group_last = np.append(group_first[1:] - 1, len(label) - 1)
        group_score = np.add.reduceat(word_score, group_first) / (group_last - group_first + 1)
        found = []
        for g, (first, last) in enumerate(zip(group_first.tolist(), group_last.tolist())):
            name = self._tags[tag[first]]
            if name != "O":
                found.append({"entity_group": name, "score": float(group_score[g]),
                              "start": int(starts[word_first[first]]), "end": int(ends[word_last[last]])})
        return found

    def _combine(self, text: str, parts: list[list[dict]]) -> list[Entity]:
        """Overlapping windows resolved as the pipeline does (longest, then highest score)."""
        found = [g for part in parts for g in part]
        if len(parts) > 1:
            found = self._pipeline.aggregate_overlapping_entities(found)
        entities = [Entity(g["entity_group"], text[g["start"] : g["end"]], int(g["start"]),
                           int(g["end"]), float(g["score"])) for g in found]
        return merge_adjacent(text, entities)


def _max_length(tokenizer, config) -> int:
    limits = [getattr(config, "max_position_embeddings", 512)]
    if tokenizer.model_max_length and tokenizer.model_max_length < 100_000:
        limits.append(tokenizer.model_max_length)
    return min(limits)
