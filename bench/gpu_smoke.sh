#!/usr/bin/env bash
# GPU smoke bench (< 5 minutes): the rvc converter (v2 40 kHz full size, RMVPE, half precision)
# and the uvr separator's architectures on CUDA, 30 s of audio each, random full-size weights.
#
#     bash bench/gpu_smoke.sh            # PYTHON=... to pick the interpreter, OUT=dir for the logs
#
# Needs a Python with CUDA torch and the project's inference requirements (numpy, scipy, soxr,
# faiss-cpu, soundfile; audio-separator for uvr). On a bare GPU machine, put the missing wheels in
# .whl/ (see requirements*.txt for versions): they are installed into /tmp/site first.
set -u
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
        PYTHON=.venv/bin/python
    else
        PYTHON=python3
    fi
fi
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PYTHON" - <<'EOF' || exit 2
import importlib, torch
missing = [m for m in ("numpy", "scipy", "soxr", "faiss", "soundfile") if importlib.util.find_spec(m) is None]
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device: this script measures the GPU path")
if missing:
    raise SystemExit("missing python packages: " + ", ".join(missing) + " (put their wheels in .whl/)")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"

rc=0
echo "== rvc (cuda, half) =="
timeout 120 "$PYTHON" bench/rvc_bench.py --device cuda --half --seconds 30 --runs 3 --budget 60 \
    2>"$OUT/rvc_bench.err" | tee "$OUT/rvc_bench.md" || { rc=1; tail -20 "$OUT/rvc_bench.err"; }
if [ -f bench/uvr_bench.py ]; then
    echo "== uvr (cuda) =="
    timeout 160 "$PYTHON" bench/uvr_bench.py --device cuda --budget 20 \
        2>"$OUT/uvr_bench.err" | tee "$OUT/uvr_bench.md" || { rc=1; tail -20 "$OUT/uvr_bench.err"; }
else
    echo "bench/uvr_bench.py not present: uvr skipped"
fi
exit $rc
