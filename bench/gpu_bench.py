"""Both engines' benches on a GPU machine that has torch and transformers but neither our
model packages nor a network (bench/gpu.sh runs this). The models there are the real
architectures and tokenizers with random weights (bench/gpu/: configs and tokenizers only; the
weights do not fit the 64 MiB that travels: SmolLM2's GGUF alone is 98 MB). Speeds depend on
shapes, not on weights; with random weights every output runs to the token cap, so the LLM rows
time fixed-length passes (`cap` steps) and count events per second at that length.

python -m bench.gpu_bench [--device cuda] [--texts 256] [--cap 128]   (prints JSON lines; from the
repository root, or python bench/gpu_bench.py ...)"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__" and not __package__:  # python bench/gpu_bench.py: the repository root on
    sys.path[0] = str(ROOT)  # the path (for `streams` and `bench`), not bench/
GPU = ROOT / "bench" / "gpu"


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def random_model(kind: str, src: Path, dest: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(src)
    cls = {"ner": AutoModelForTokenClassification, "encoder": AutoModel, "llm": AutoModelForCausalLM}[kind]
    model = cls.from_config(config)
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(src).save_pretrained(dest)
    for extra in ("chat_template.jinja", "generation_config.json"):
        if (src / extra).exists():
            (dest / extra).write_bytes((src / extra).read_bytes())
    return dest


def texts(n: int, corpus: str = "samples") -> list[str]:
    """`n` texts: the support-ticket samples, or generated tickets (bench/corpus.py)."""
    if corpus == "tickets":
        from bench import corpus as generated

        return generated.texts(n)
    from streams import samples

    return samples.texts(n, "support.tickets")


def bench_encoder(device: str, tmp: Path, n: int) -> None:
    from bench.encoder import bench_engine
    from streams.engine import EncoderEngine, LabelSet
    from streams.settings import SUPPORT_TICKET_LABELS

    ner = random_model("ner", GPU / "rampart-ner", tmp / "ner")
    enc = random_model("encoder", GPU / "minilm", tmp / "encoder")
    engine = EncoderEngine.load(str(ner), str(enc), cache_dir=tmp, device=device, max_batch=64)
    labels = LabelSet.from_mapping(SUPPORT_TICKET_LABELS)
    engine.warm_up()
    from bench.encoder import bench_reference
    from bench.reference import ReferenceModels

    reference = ReferenceModels(ner, enc, SUPPORT_TICKET_LABELS, device=device)
    for corpus in ("tickets", "samples"):
        batch = texts(n, corpus)
        for size in (256, 64, 1):
            rate = bench_engine(engine, batch if size > 1 else batch[:64], labels, size)
            emit(run="encoder engine", corpus=corpus, batch=size, events_per_s=round(rate, 1),
                 dtype=str(engine.extractor.model.dtype))
        engine_rate = bench_engine(engine, batch, labels, 32)
        ref_rate = bench_reference(reference, batch, 32)
        emit(run="reference (NER pipeline + MiniLM forward, 32)", corpus=corpus, events_per_s=round(ref_rate, 1),
             engine_32_events_per_s=round(engine_rate, 1), engine_over_reference=round(engine_rate / ref_rate, 2))


def bench_llm(device: str, tmp: Path, n: int, cap: int, rows: int) -> None:
    import torch

    from streams.engine import LabelSet
    from streams.engine.llm import LLMEngine, LLMTask
    from streams.serde.fields import load_field_schema
    from streams.settings import SUPPORT_TICKET_LABELS

    try:
        import xgrammar  # noqa: F401
        constrained = True
    except Exception as exc:  # noqa: BLE001 - a missing or broken wheel: unconstrained only
        emit(run="grammar", skipped=f"xgrammar unavailable ({type(exc).__name__}: {exc}); "
                                    "LLM rows run unconstrained")
        constrained = False
    model_dir = random_model("llm", GPU / "smollm2-135m", tmp / "llm")
    llm = LLMEngine.load(str(model_dir), cache_dir=tmp, device=device, dtype="auto", max_batch=rows,
                         max_new_tokens=cap, retry_max_new_tokens=cap, max_tokens=10 ** 7,
                         constrained=constrained)
    fields = load_field_schema(ROOT / "schemas", "SupportTicketFields")
    prepared = llm.add_task(LLMTask("support.tickets", LabelSet.from_mapping(SUPPORT_TICKET_LABELS), None, fields))
    emit(run="llm setup", dtype=str(llm.dtype), prefix_tokens=len(prepared.prefix_ids),
         prefix_cache=prepared.prefix_cache is not None, compile_s=round(prepared.compile_seconds, 2))
    ids = llm.prompt_ids("support.tickets", texts(n))

    def timed(batch_rows: int, count: int, use_grammar: bool) -> tuple[float, int]:
        llm.max_batch = batch_rows
        done, steps = 0, 0
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = llm._generate_pass(prepared, ids[:count], cap, use_grammar)  # continuously batched
        done += count
        steps += sum(cap if t is None else len(t) + 1 for t, _, _ in out)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started, steps

    timed(rows, min(rows, n), constrained)  # warm-up
    seconds, tokens = timed(rows, n, constrained)
    batched = n / seconds
    emit(run="llm engine, batched", rows=rows, events_per_s=round(batched, 2),
         output_tokens_per_s=round(tokens / seconds, 1), constrained=constrained, cap=cap)
    k = min(n, 16)
    seconds1, tokens1 = timed(1, k, constrained)
    emit(run="llm naive (one per call)", events_per_s=round(k / seconds1, 2),
         output_tokens_per_s=round(tokens1 / seconds1, 1), ratio_batched_over_naive=round(batched / (k / seconds1), 2))
    if constrained:
        sc, tc = timed(rows, n, True)
        su, tu = timed(rows, n, False)
        emit(run="grammar overhead", constrained_ms_per_token=round(sc / tc * 1000, 3),
             unconstrained_ms_per_token=round(su / tu * 1000, 3),
             overhead_pct=round(((sc / tc) / (su / tu) - 1) * 100, 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--cap", type=int, default=128)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--only", choices=["encoder", "llm"], default=None)
    args = ap.parse_args()
    import torch
    import transformers

    emit(run="versions", torch=torch.__version__, transformers=transformers.__version__,
         cuda=torch.cuda.is_available(),
         card=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "encoder"):
            try:
                bench_encoder(args.device, Path(tmp), args.texts)
            except Exception as exc:  # noqa: BLE001 - report and go on to the LLM rows
                emit(run="encoder engine", error=f"{type(exc).__name__}: {exc}")
        if args.only in (None, "llm"):
            bench_llm(args.device, Path(tmp), args.texts, args.cap, args.rows)


if __name__ == "__main__":
    main()
