"""The encoder engine: entity extraction and classification with encoder models (torch)."""

from __future__ import annotations

import time
import warnings
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Sequence

import torch

from .classify import SequenceClassifier, ZeroShotClassifier
from .loading import (DEFAULT_CLASSIFIER, DEFAULT_NER, ModelLoadError, architecture, choose_device,
                      resolve_model)
from .precision import encoder_dtype
from .ner import EntityExtractor
from .types import Inference, LabelSet, ModelInfo, Prompt


class EncoderEngine:
    """Entity extraction + classification for a batch of texts, in one call (the `Engine`
    protocol: every topic gets the same models, and nothing caps its batches).

    With `overlap_tokenization`, the classifier's windows are tokenized in a background thread
    (one, owned by the engine) while the entity model's forward passes run: fast tokenizers
    release the GIL while they encode. It pays when the forward passes run on a GPU; on CPU
    torch already keeps every core busy."""

    runs_models = True
    progress_at = None  # not reported: /livez goes by the time since the last poll

    def __init__(self, extractor: EntityExtractor, classifier, models: list[ModelInfo], device,
                 load_seconds: float = 0.0, *, overlap_tokenization: bool = False):
        self.extractor = extractor
        self.classifier = classifier
        self.models = models
        self.device = device
        self.load_seconds = load_seconds
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") \
            if overlap_tokenization else None

    @property
    def overlap_tokenization(self) -> bool:
        return self._tokenizer_thread is not None

    @classmethod
    def load(cls, ner: str = DEFAULT_NER, classifier: str = DEFAULT_CLASSIFIER, *,
             cache_dir: Path, device: str = "auto", max_batch: int = 32,
             max_tokens: int = 8192, model_version: str | None = None,
             overlap_tokenization: bool | None = None, quantize: str = "none",
             precision: str = "auto") -> "EncoderEngine":
        """`overlap_tokenization`: None (auto) turns it on for a CUDA device, off on CPU.
        `quantize="int8"`: dynamic int8 quantization of both models' Linear layers, for
        CPU-only deployments (faster, less exact: `streams bench` prints both).
        `precision`: each model's dtype on CPU (`precision.encoder_dtype`: auto, fp32, bf16)."""
        started = time.perf_counter()
        dev = choose_device(device)
        if quantize not in ("none", "int8"):
            raise ModelLoadError(f"STREAMS_QUANTIZE={quantize!r}: use none or int8")
        if quantize == "int8" and dev.type != "cpu":
            raise ModelLoadError("STREAMS_QUANTIZE=int8 is for CPU-only deployments; on a GPU the "
                                 "models already run in bf16/fp16")
        ner_dir, ner_info = resolve_model(ner, "entities", cache_dir)
        cls_dir, cls_info = resolve_model(classifier, "classification", cache_dir)
        ner_arch, cls_arch = architecture(ner_dir), architecture(cls_dir)
        try:
            ner_dtype, cls_dtype = (torch.float32, torch.float32) if quantize == "int8" else (
                encoder_dtype(dev, precision, info, cache_dir) for info in (ner_info, cls_info))
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc
        if not ner_arch.endswith("ForTokenClassification"):
            raise ModelLoadError(f"entity model {ner!r} is a {ner_arch}, not a token-classification model")
        try:
            extractor = EntityExtractor(ner_dir, dev, ner_dtype, max_batch=max_batch, max_tokens=max_tokens)
            if cls_arch.endswith("ForSequenceClassification"):
                clf = SequenceClassifier(cls_dir, dev, cls_dtype, max_batch=max_batch, max_tokens=max_tokens)
            elif "For" in cls_arch:
                raise ModelLoadError(f"classifier {classifier!r} is a {cls_arch}: use a sequence-"
                                     "classification model or a plain encoder (zero-shot)")
            else:
                clf = ZeroShotClassifier(cls_dir, dev, cls_dtype, max_batch=max_batch, max_tokens=max_tokens)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"could not load models: {exc}") from exc
        models = [ner_info, cls_info]
        if model_version:
            models = [ModelInfo(m.task, m.name, model_version) for m in models]
        if dev.type == "cpu":  # provenance: output of a model run in bf16 on CPU says so
            models = [ModelInfo(m.task, m.name, f"{m.version}+bf16") if dtype == torch.bfloat16 else m
                      for m, dtype in zip(models, (ner_dtype, cls_dtype))]
        if quantize == "int8":
            quantize_int8(extractor.model)
            quantize_int8(clf.model)
            # Provenance: output written by the quantized models says so.
            models = [ModelInfo(m.task, m.name, f"{m.version}+int8") for m in models]
        overlap = dev.type == "cuda" if overlap_tokenization is None else overlap_tokenization
        return cls(extractor, clf, models, dev, time.perf_counter() - started,
                   overlap_tokenization=overlap)

    def warm_up(self, largest: bool | None = None) -> float:
        """Runs each model once on the largest batch shapes the batching can produce, so the
        accelerator's caching allocator reserves its largest buffers at start-up (memory
        stays steady afterwards, and an out-of-memory shows here, not at the first big batch).

        `largest=None`: on an accelerator only. On CPU the allocator keeps nothing to reserve
        and those passes would cost seconds at start-up, so each model runs one small batch
        instead (its lazy set-up). Returns the duration, which is also added to
        `load_seconds`: it is part of getting ready."""
        if largest is None:
            largest = self.device.type != "cpu"
        started = time.perf_counter()
        self.extractor.warm_up(largest)
        self.classifier.warm_up(largest)
        seconds = time.perf_counter() - started
        self.load_seconds += seconds
        return seconds

    def models_for(self, topic: str) -> list[ModelInfo]:
        return self.models

    def prompt_for(self, topic: str) -> Prompt | None:
        return None  # no prompt: the labels' descriptions are the whole instruction

    def max_events_for(self, topic: str, budget_s: float) -> int | None:
        return None

    def infer(self, texts: Sequence[str], labels: LabelSet | None,
              topic: str | None = None) -> list[Inference]:
        if not texts:
            return []
        if self._tokenizer_thread is None:
            entities = self.extractor.extract(texts)
            classes = self.classifier.classify(texts, labels)
        else:
            windows = self._tokenizer_thread.submit(self.classifier.tokenize, list(texts))
            try:
                entities = self.extractor.extract(texts)
            except BaseException:
                windows.cancel()
                wait([windows])  # never leave the classifier's tokenizer busy behind a failure
                raise
            classes = self.classifier.classify(texts, labels, windows=windows.result())
        return [Inference(e, c) for e, c in zip(entities, classes)]

    def close(self) -> None:
        """Stops the tokenizer thread, if any."""
        if self._tokenizer_thread is not None:
            self._tokenizer_thread.shutdown(wait=True)


def quantize_int8(model: torch.nn.Module) -> None:
    """Dynamic int8 quantization of every Linear layer, in place (the extractor, the classifier
    and their pipelines keep the same model object): weights stored as int8, activations
    quantized per batch. CPU only."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
