"""Tokenize into model-sized windows and group them into length-sorted, dynamically padded
batches, so a batch of short notes never pays for one long ticket's padding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch


@dataclass(frozen=True, slots=True)
class Window:
    """One model input: a whole short text, or one overlapping slice of a long one."""

    text_index: int
    input_ids: list[int]
    offsets: list[tuple[int, int]]  # character spans into the original text
    special_mask: list[int]


def tokenize_windows(tokenizer, texts: Sequence[str], max_length: int, stride: int) -> list[Window]:
    """Texts longer than `max_length` tokens become several windows overlapping by `stride`
    tokens; offsets stay relative to the original text, so results map straight back."""
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    mapping = enc["overflow_to_sample_mapping"]
    return [
        Window(int(mapping[i]), enc["input_ids"][i], [tuple(o) for o in enc["offset_mapping"][i]],
               enc["special_tokens_mask"][i])
        for i in range(len(mapping))
    ]


def length_batches(windows: Sequence[Window], max_batch: int, max_tokens: int) -> Iterator[list[int]]:
    """Indices of `windows` sorted by length, cut so each batch holds at most `max_batch`
    windows and at most `max_tokens` padded tokens."""
    order = sorted(range(len(windows)), key=lambda i: len(windows[i].input_ids))
    batch: list[int] = []
    for i in order:
        longest = len(windows[i].input_ids)  # sorted ascending: the newest is the longest
        if batch and (len(batch) >= max_batch or (len(batch) + 1) * longest > max_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def pad(windows: Sequence[Window], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    longest = max(len(w.input_ids) for w in windows)
    ids = torch.full((len(windows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), longest), dtype=torch.long)
    for row, w in enumerate(windows):
        ids[row, : len(w.input_ids)] = torch.tensor(w.input_ids, dtype=torch.long)
        mask[row, : len(w.input_ids)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
