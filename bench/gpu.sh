#!/usr/bin/env bash
# GPU check for a session lent a GPU machine (torch + transformers preinstalled, no network, at
# most 64 MiB of working tree carried): installs what it lacks from carried wheels
# (bench/gpu/wheels, made by `make gpu-wheels`; carry that ignored folder), then runs both
# engines' benches on CUDA and prints the card and the figures, within 8 minutes.
#   bash bench/gpu.sh            (from the repository root; PYTHON=... to pick the interpreter)
# The models are the real architectures and tokenizers with random weights (bench/gpu_bench.py
# says why; only numpy, pydantic(-settings), torch and transformers are imported, nothing of the
# bench extra). Without xgrammar (no wheel for this Python) the LLM rows run unconstrained and the
# grammar row says it was skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS=bench/gpu/wheels
BUDGET_S="${BUDGET_S:-460}"
started=$(date +%s)

echo "== card"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
"$PY" -c 'import sys, torch, transformers; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "transformers", transformers.__version__)' || { echo "torch/transformers missing: nothing to run"; exit 1; }

# module to import -> distribution to install from the carried wheels
need() {
  if ! "$PY" -c "import $1" 2>/dev/null; then
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
      echo "installing $2 from $WHEELS"
      "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" "$2" 2>&1 | tail -2 || true
    fi
    "$PY" -c "import $1" 2>/dev/null || echo "still missing: $1"
  fi
}
echo "== dependencies"
need annotated_types annotated-types
need typing_inspection typing-inspection
need pydantic_core pydantic-core
need pydantic pydantic
need dotenv python-dotenv
need pydantic_settings pydantic-settings
need tvm_ffi apache-tvm-ffi
need xgrammar xgrammar==0.2.8
need numpy numpy

left=$(( BUDGET_S - ($(date +%s) - started) ))
echo "== benches (${left}s left of ${BUDGET_S}s)"
# The encoder rows first (short), then the LLM rows; each JSON line is one figure.
timeout "$left" "$PY" -m bench.gpu_bench --device cuda --texts "${TEXTS:-256}" --cap "${CAP:-128}" --rows "${ROWS:-64}"
rc=$?
[ $rc -eq 124 ] && echo "stopped at the time budget: the rows above are complete figures"
echo "== done in $(( $(date +%s) - started ))s"
exit $rc
