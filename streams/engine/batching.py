"""Tokenize into model-sized windows and group them into length-sorted, dynamically padded
batches, so a batch of short notes never pays for one long ticket's padding; run a model over
those batches with the next forward pass always launched before the last one's outputs are
handed back (`forward_batches`), each pass reporting its batch fill to the inference thread."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .thread import inference_thread


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


class Rows(list):
    """A batch's window indices, and `capacity`: the rows the limits allow at its longest
    window's length, what `forward_batches` divides by for the batch fill."""

    __slots__ = ("capacity",)


def length_batches(windows: Sequence[Window], max_batch: int, max_tokens: int) -> Iterator[Rows]:
    """Indices of `windows` sorted by length, cut so each batch holds at most `max_batch`
    windows and at most `max_tokens` padded tokens."""
    order = sorted(range(len(windows)), key=lambda i: len(windows[i].input_ids))
    batch = Rows()
    for i in order:
        longest = len(windows[i].input_ids)  # sorted ascending: the newest is the longest
        if batch and (len(batch) >= max_batch or (len(batch) + 1) * longest > max_tokens):
            yield batch
            batch = Rows()
        batch.append(i)
        batch.capacity = max(1, min(max_batch, max_tokens // max(1, longest)))
    if batch:
        yield batch


def largest_shapes(max_batch: int, max_tokens: int, max_length: int) -> list[tuple[int, int]]:
    """The extreme (rows, tokens) shapes `length_batches` can produce for windows of at most
    `max_length` tokens: the longest windows, as many as fit (always at least one), and the
    most windows, as long as they may be."""
    longest = (max(1, min(max_batch, max_tokens // max_length)), max_length)
    widest = (max_batch, max(1, min(max_length, max_tokens // max_batch)))
    return list(dict.fromkeys([longest, widest]))


def pad(windows: Sequence[Window], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Pad to the longest window and move to `device`. For CUDA the host side is pinned and
    the copy asynchronous, so the call does not wait for the forward passes still running."""
    longest = max(len(w.input_ids) for w in windows)
    cuda = device.type == "cuda"
    ids = torch.full((len(windows), longest), pad_id, dtype=torch.long, pin_memory=cuda)
    mask = torch.zeros((len(windows), longest), dtype=torch.long, pin_memory=cuda)
    for row, w in enumerate(windows):
        ids[row, : len(w.input_ids)] = torch.tensor(w.input_ids, dtype=torch.long)
        mask[row, : len(w.input_ids)] = 1
    return {"input_ids": ids.to(device, non_blocking=cuda),
            "attention_mask": mask.to(device, non_blocking=cuda)}


Forward = Callable[[dict[str, torch.Tensor]], torch.Tensor]


@torch.inference_mode()
def forward_batches(windows: Sequence[Window], batches: Iterable[list[int]], forward: Forward,
                    pad_id: int, device: torch.device) -> Iterator[tuple[list[int], np.ndarray]]:
    """(window indices, float32 outputs row by row) for each batch, in the order of `batches`.

    Software-pipelined: batch k+1 is padded, moved to the device and its forward pass
    launched before batch k's outputs are yielded, so on CUDA (asynchronous kernels) the
    caller's CPU post-processing of batch k overlaps the GPU's work on batch k+1. On CPU the
    forward pass of k+1 simply runs first: the same work, the same results in the same order.

    Each pass of a `length_batches` batch reports its fill (rows / `Rows.capacity`) to the
    inference thread: one value per pass, nothing per window."""
    pending: tuple[list[int], torch.Tensor, torch.cuda.Event | None] | None = None
    for batch in batches:
        launched = (batch, *_launch(forward, pad([windows[i] for i in batch], pad_id, device)))
        capacity = getattr(batch, "capacity", None)  # None: a warm-up's own batch
        if capacity is not None:
            inference_thread.batch_filled(len(batch), capacity, "encoder")
        if pending is not None:
            yield pending[0], _fetch(*pending[1:])
        pending = launched
    if pending is not None:
        yield pending[0], _fetch(*pending[1:])


def _launch(forward: Forward, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    out = forward(inputs).float()
    if out.device.type != "cuda":
        return out, None
    # Queue the copy back behind the forward pass (into pinned memory, without waiting) and
    # mark its end: a plain .cpu() later would also wait for the *next* batch's kernels.
    host = out.to("cpu", non_blocking=True)
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(out.device))
    return host, done


def _fetch(out: torch.Tensor, done: torch.cuda.Event | None) -> np.ndarray:
    if done is not None:
        done.synchronize()
    return out.numpy()


def warm_up_forward(forward: Forward, pad_id: int, device: torch.device, max_batch: int,
                    max_tokens: int, max_length: int, largest: bool = True) -> None:
    """One forward pass per extreme shape of `largest_shapes` (or, `largest=False`, one small
    pass), on pad tokens, through the same padding and pipelining as real batches."""
    shapes = largest_shapes(max_batch, max_tokens, max_length) if largest else [(1, min(16, max_length))]
    for rows, tokens in shapes:
        windows = [Window(0, [pad_id] * tokens, [(0, 0)] * tokens, [0] * tokens)] * rows
        for _ in forward_batches(windows, iter([list(range(rows))]), forward, pad_id, device):
            pass
