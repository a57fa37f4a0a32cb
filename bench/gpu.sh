#!/usr/bin/env bash
# The benchmark on a GPU at the released openaudio-s1-mini shapes (random weights), from a clean clone:
#
#   bash bench/gpu.sh
#
# 1. a venv with a CUDA torch (scripts/setup_env.sh with PyPI's torch 2.8.0, CUDA 12.8: needs network)
#    unless $VENV already has a torch that sees a GPU;
# 2. the s1-mini checkpoint (3.3 GB, ~30 s) in $CKPT unless it is there;
# 3. bench/run.py --device cuda --size s1-mini, eager and with FISH_COMPILE (--compile), printing RTF,
#    time to first audio, tokens/s at 1/8/16 concurrent jobs vs fish-speech's own loop, and peak GPU
#    memory; JSON results in $OUT.
#
#   VENV (.venv-gpu)  CKPT (/tmp/fish-s1-mini)  OUT (bench/results-gpu)  MAX_TOKENS (200 frames per job)
#   LEVELS (1,8,16)   FISH_JOBS (4: fish-speech baseline jobs run one after another)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-gpu}
CKPT=${CKPT:-/tmp/fish-s1-mini}
OUT=${OUT:-bench/results-gpu}
MAX_TOKENS=${MAX_TOKENS:-200}
LEVELS=${LEVELS:-1,8,16}
FISH_JOBS=${FISH_JOBS:-4}

if ! "$VENV/bin/python" -c "import torch, fish_speech, httpx; assert torch.cuda.is_available()" 2>/dev/null; then
  VENV="$VENV" TORCH_SPEC=${TORCH_SPEC:-torch==2.8.0} TORCHAUDIO_SPEC=${TORCHAUDIO_SPEC:-torchaudio==2.8.0} \
    WITH_DEV=0 bash scripts/setup_env.sh
  "$VENV/bin/python" -m pip --disable-pip-version-check -q install "httpx>=0.27"
fi
PY="$VENV/bin/python"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
[ -f "$CKPT/model.pth" ] || "$PY" -m fish_worker.devtools.tiny_checkpoint "$CKPT" --size s1-mini
mkdir -p "$OUT"
common=(--device cuda --size s1-mini --checkpoint "$CKPT" --levels "$LEVELS" --max-tokens "$MAX_TOKENS"
        --fish-jobs "$FISH_JOBS")
echo "== eager =="
"$PY" bench/run.py "${common[@]}" --out "$OUT/eager.json"
echo "== FISH_COMPILE (torch.compile, inductor) =="
"$PY" bench/run.py "${common[@]}" --compile --no-cold-start --out "$OUT/compile.json"
