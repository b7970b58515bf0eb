"""`python -m bench.runtimes`: eager torch against ONNX Runtime for the two encoder models, on CPU.

Both models (the Rampart NER, all-MiniLM-L6-v2 with mean pooling) run over the same generated
tickets (`bench.corpus`) as the engine feeds them: windows, length-sorted batches of 32, each
padded to its longest window. Throughput in texts/s, both models together, tokenization
included, for torch fp32, torch bf16 weights, torch int8 (the engine's STREAMS_QUANTIZE=int8),
ORT fp32, ORT fp32 after its transformer optimizer, and ORT dynamic int8 (of the optimized
graph); all in one process, two rounds in alternate order. Agreement with torch fp32: the share
of NER tokens with the same argmax label, the cosine of the MiniLM pooled vectors (mean, min),
and the share of equal zero-shot labels (the support-ticket labels).

onnxruntime is NOT a dependency of the product (onnx is, only to convert Rampart): the script
stops with a message when either is missing (`pip install onnxruntime onnx`)."""

from __future__ import annotations

import copy
import inspect
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers.models.bert.modeling_bert import BertSdpaSelfAttention, BertSelfAttention

from streams.allocator import ensure_allocator
from streams.settings import SUPPORT_TICKET_LABELS, Settings

try:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer
except ImportError as exc:
    sys.exit(f"bench.runtimes needs onnxruntime and onnx, which the product does not depend on "
             f"({exc}): pip install onnxruntime onnx")

from streams.engine import EncoderEngine
from streams.engine.batching import length_batches, tokenize_windows
from streams.engine.encoder import quantize_int8

from . import corpus

N_TEXTS, BATCH, THREADS = 256, 32, 2


class Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class Pooled(Logits):  # the ZeroShotClassifier's mean pooling
    def forward(self, input_ids, attention_mask):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def batches(part, texts):
    """Tokenize, length-sort, pad per batch (int64 numpy), as the engine does."""
    windows = tokenize_windows(part.tokenizer, texts, part.max_length, part.stride)
    for rows in length_batches(windows, BATCH, 8192):
        ids = np.full((len(rows), max(len(windows[i].input_ids) for i in rows)),
                      part.tokenizer.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros_like(ids)
        for r, i in enumerate(rows):
            ids[r, : len(windows[i].input_ids)], mask[r, : len(windows[i].input_ids)] = windows[i].input_ids, 1
        yield ids, mask


def torch_runner(module):
    return torch.inference_mode()(
        lambda ids, mask: module(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy())


def ort_runner(path: Path):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads, opts.inter_op_num_threads = THREADS, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda ids, mask: session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def export(module, path: Path) -> float:
    """ONNX (opset 17, dynamic batch and sequence) of a copy with BERT's eager attention: SDPA's
    export is not the pattern ORT's attention fusion looks for. Returns the seconds taken."""
    started, module = time.perf_counter(), copy.deepcopy(module)
    for sub in module.modules():
        if isinstance(sub, BertSdpaSelfAttention):
            sub.__class__ = BertSelfAttention  # same parameters, plain matmul/softmax forward
        if hasattr(sub, "attn_implementation"):
            sub.attn_implementation = "eager"  # BertModel: a 4-D additive mask, not SDPA's
    example, axes = torch.ones(2, 16, dtype=torch.long), {0: "batch", 1: "sequence"}
    torch.onnx.export(module, (example, example), str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["out"],
                      dynamic_axes={"input_ids": axes, "attention_mask": axes, "out": {0: "batch"}})
    return time.perf_counter() - started


def one_pass(ner_run, cls_run, texts, ner, cls):
    """Both models over `texts`: seconds, NER argmax labels (real tokens), pooled vectors."""
    started, labels = time.perf_counter(), []
    for ids, mask in batches(ner, texts):
        labels.append(ner_run(ids, mask).argmax(-1)[mask == 1])
    vectors = np.concatenate([cls_run(ids, mask) for ids, mask in batches(cls, texts)])
    return time.perf_counter() - started, np.concatenate(labels), vectors


def main() -> None:
    s = Settings()
    ensure_allocator(s.allocator, module="bench.runtimes")  # jemalloc, as the worker runs
    torch.set_num_threads(THREADS)
    # fp32 weights whatever STREAMS_PRECISION says (the engine may pick bf16 on this CPU)
    fp32_kw = {"precision": "fp32"} if "precision" in inspect.signature(EncoderEngine.load).parameters else {}
    eng = EncoderEngine.load(s.ner_model, s.classifier_model, cache_dir=s.model_cache,
                             device="cpu", max_batch=BATCH, **fp32_kw)
    assert eng.extractor.model.dtype == eng.classifier.model.dtype == torch.float32
    ner, cls = eng.extractor, eng.classifier.encoder
    fp32 = Logits(ner.model).eval(), Pooled(eng.classifier.model).eval()
    bf16 = tuple(copy.deepcopy(m).to(torch.bfloat16) for m in fp32)
    int8 = tuple(copy.deepcopy(m) for m in fp32)
    for m in int8:
        quantize_int8(m)
    with tempfile.TemporaryDirectory(prefix="streams-onnx-") as tmp:
        files = {kind: (Path(tmp, f"ner-{kind}.onnx"), Path(tmp, f"cls-{kind}.onnx"))
                 for kind in ("plain", "opt", "int8")}
        for name, module, path in zip(("NER", "MiniLM"), fp32, files["plain"]):
            print(f"export {name}: {export(module, path):.1f} s")
        started = time.perf_counter()
        for plain, opt in zip(files["plain"], files["opt"]):
            optimized = optimizer.optimize_model(str(plain), model_type="bert", num_heads=12, hidden_size=384)
            print("  fused:", {k: v for k, v in optimized.get_fused_operator_statistics().items() if v})
            optimized.save_model_to_file(str(opt))
        print(f"transformer optimizer, both models: {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        for opt, q in zip(files["opt"], files["int8"]):  # the fused ops' outputs have no inferred type
            quantize_dynamic(str(opt), str(q), weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        print(f"int8 dynamic quantization, both models: {time.perf_counter() - started:.1f} s")
        variants = {"torch fp32": fp32, "torch bf16": bf16, "torch int8 (dynamic)": int8}
        variants = {k: tuple(map(torch_runner, v)) for k, v in variants.items()} | {
            "ORT fp32": tuple(map(ort_runner, files["plain"])),
            "ORT fp32 optimized": tuple(map(ort_runner, files["opt"])),
            "ORT int8 (dynamic, optimized)": tuple(map(ort_runner, files["int8"]))}

    texts, descriptions = corpus.texts(N_TEXTS), list(SUPPORT_TICKET_LABELS.values())
    for runs in variants.values():  # warm-up: lazy set-up, first allocations
        one_pass(*runs, texts[:BATCH], ner, cls)
    rates: dict[str, list[float]] = {v: [] for v in variants}
    outputs: dict[str, tuple] = {}
    for order in (list(variants), list(reversed(variants))):
        for name in order:
            seconds, labels, vectors = one_pass(*variants[name], texts, ner, cls)
            rates[name].append(len(texts) / seconds)
            label_vectors = np.concatenate([variants[name][1](i, m) for i, m in batches(cls, descriptions)])
            vectors, label_vectors = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (vectors, label_vectors))
            outputs[name] = labels, vectors, (vectors @ label_vectors.T).argmax(1)
            print(f"round {len(rates[name])}  {name:30s} {rates[name][-1]:6.1f} texts/s", flush=True)

    ref, base = outputs["torch fp32"], np.mean(rates["torch fp32"])
    print(f"\n{N_TEXTS} texts, batch {BATCH}, {THREADS} threads, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}; texts/s, agreement with torch fp32")
    print(f"{'variant':30s} {'round 1':>8s} {'round 2':>8s} {'mean':>7s} {'vs fp32':>7s} "
          f"{'NER tok':>8s} {'cos mean':>9s} {'cos min':>8s} {'labels':>7s}")
    for name, r in rates.items():
        labels, vectors, topics = outputs[name]
        cos = (vectors * ref[1]).sum(1)
        print(f"{name:30s} {r[0]:8.1f} {r[1]:8.1f} {np.mean(r):7.1f} {np.mean(r) / base:6.2f}x "
              f"{(labels == ref[0]).mean():8.4f} {cos.mean():9.5f} {cos.min():8.5f} "
              f"{(topics == ref[2]).mean():7.3f}")


if __name__ == "__main__":
    main()
