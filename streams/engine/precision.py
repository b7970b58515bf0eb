"""Which precision each encoder model runs in on CPU, and why.

On a CPU with native bf16 (AMX or AVX-512 BF16) the encoders run ~1.6x faster in bf16 than in
fp32, but a model may then give other answers. So `auto` runs a model in bf16 only where its
agreement with fp32 was measured and met the bar: for the entity model an entity F1 of at least
0.98 against fp32's spans, for the classifier at least 99 % equal labels. The figures come from
`streams bench`, which measures both models on its generated tickets and on the samples and
records them in the model cache (`<STREAMS_MODEL_CACHE>/precision.json`); the built-in models'
figures ship with the package (`precision.json` beside this module). A model without a recorded
verdict (a new checkpoint: its version is a digest of its weights) runs in fp32 until one is.
`STREAMS_PRECISION=fp32` opts out, `bf16` opts in without a verdict."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .types import ModelInfo

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
# The agreement figure each task's verdict is judged by, and its bar.
BARS = {"entities": ("entities_f1", 0.98), "classification": ("labels", 0.99)}
SHIPPED = Path(__file__).with_name("precision.json")


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX-512 BF16: there bf16 matmuls beat fp32 (measured 1.6-3x here)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def model_key(model: ModelInfo) -> str:
    return f"{model.name}@{model.version}"


def _recorded(cache_dir: Path) -> Path:
    return Path(cache_dir) / "precision.json"


def verdicts(cache_dir: Path) -> dict[str, dict]:
    """Agreement figures per model key: the shipped ones, overlaid by those `streams bench`
    recorded in the model cache (a figure measured here wins)."""
    found: dict[str, dict] = {}
    for path in (SHIPPED, _recorded(cache_dir)):
        try:
            found |= json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            log.warning("precision verdicts in %s unreadable (%s): ignored", path, exc)
    return found


def record(cache_dir: Path, model: ModelInfo, figures: dict) -> None:
    """Keeps `figures` (bf16's agreement with fp32 for `model`) in the model cache."""
    path = _recorded(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = {}
    kept[model_key(model)] = {"bf16": figures}
    path.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")


def passes(model: ModelInfo, figures: dict | None) -> bool:
    metric, bar = BARS[model.task]
    return bool(figures) and figures.get(metric, 0.0) >= bar


def encoder_dtype(device: "torch.device", precision: str, model: ModelInfo,
                  cache_dir: Path) -> "torch.dtype":
    """The dtype `model` loads in: half precision on a GPU (bf16 where supported), and on CPU
    what `precision` says (`auto`: bf16 on a CPU with native bf16 where the recorded agreement
    meets the bar, else fp32)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"STREAMS_PRECISION={precision!r}: use {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if not cpu_has_fast_bf16():
        return torch.float32
    figures = verdicts(cache_dir).get(model_key(model), {}).get("bf16")
    if passes(model, figures):
        metric, _ = BARS[model.task]
        log.info("%s model in bf16: agreement with fp32 %s %.3f on %s texts", model.task, metric,
                 figures[metric], figures.get("texts", "?"))
        return torch.bfloat16
    log.info("%s model in fp32: %s", model.task, "bf16's agreement with fp32 is below the bar"
             if figures else "no bf16 agreement recorded for it yet (streams bench records one)")
    return torch.float32
