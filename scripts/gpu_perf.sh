#!/usr/bin/env bash
# Frozen-CNN throughput on a GPU machine that has JAX (with CUDA) but not TensorFlow.
#
#   scripts/gpu_perf.sh                       # efficientnet_lite0, mobilenetv2, resnet50 at 224 px
#   PYTHON=/opt/venv/bin/python scripts/gpu_perf.sh --batch-size 64 --json gpu.json
#
# 1. checks that JAX imports and says which devices it sees (a GPU is not required: on a
#    CPU-only machine the figures are labelled CPU);
# 2. installs what bench needs and is missing, from wheels only (--only-binary=:all:): keras and
#    setup.cfg's install_requires without TensorFlow and the ONNX packages (bench itself is used
#    from this checkout through PYTHONPATH, not installed, so pip never pulls TensorFlow in);
# 3. runs scripts/gpu_perf.py with KERAS_BACKEND=jax: img/s from PNG files on disk and of the
#    compiled call alone on preloaded batches, per backbone. Extra arguments go to gpu_perf.py.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"

if ! "$PY" -c "import jax" 2>/dev/null; then
    echo "error: JAX is not importable by $PY" >&2
    echo "hint: pip install -U 'jax[cuda12]' (NVIDIA GPU) or 'jax[cpu]', or set PYTHON=/path/to/python" >&2
    exit 2
fi
"$PY" -c "import jax; print('jax', jax.__version__, 'devices:', jax.devices())"

mapfile -t REQS < <("$PY" - "$ROOT/setup.cfg" <<'PYEOF'
import configparser, sys
cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
skip = ("tensorflow", "onnx", "tf2onnx")
for line in cfg["options"]["install_requires"].splitlines():
    req = line.split("#", 1)[0].strip()
    if req and not req.lower().startswith(skip):
        print(req)
PYEOF
)
echo "installing what is missing (wheels only): ${REQS[*]}"
"$PY" -m pip install --only-binary=:all: "${REQS[@]}"

cd "$ROOT"
KERAS_BACKEND=jax PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" TF_CPP_MIN_LOG_LEVEL=2 \
    "$PY" "$ROOT/scripts/gpu_perf.py" "$@"
