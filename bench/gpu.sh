#!/usr/bin/env bash
# The benchmark on a GPU at the released openaudio-s1-mini shapes (random weights), from a clean clone:
#
#   bash bench/gpu.sh
#
# 1. a Python with a CUDA torch and the worker's packages, the first that applies:
#    - $VENV, if its torch sees a GPU;
#    - the machine's own python3 with the wheels of .whl/ (scripts/device_wheels.sh, run where PyPI is
#      reachable), installed offline into $SITE: for GPU machines without network whose python3 has
#      CUDA torch (this workplace's lent device machines: the call carries ".whl");
#    - a new venv from scripts/setup_env.sh with PyPI's torch 2.8.0 (CUDA 12.8; needs network);
# 2. the s1-mini checkpoint (3.3 GB, ~30 s) in $CKPT unless it is there;
# 3. bench/run.py --device cuda --size s1-mini for each of $MODES: eager, and compile (FISH_COMPILE,
#    --compile), printing RTF, time to first audio, tokens/s at $LEVELS concurrent jobs vs fish-speech's
#    own loop, and peak GPU memory; JSON results (eager.json, compile.json) and this script's log
#    (gpu.log) in $OUT.
#
#   VENV (.venv-gpu)  SITE (/tmp/site)  CKPT (/tmp/fish-s1-mini)  OUT (bench/results-gpu; a device
#   call's own $OUT when set)  MODES (eager,compile)  MAX_TOKENS (200 frames per job; 100 with .whl/)
#   LEVELS (1,8,16)  BASELINE_JOBS (4, 2 with .whl/: fish-speech baseline jobs run one after another)
#   DEADLINE_S (none; 560 with .whl/: each run is stopped when the script has run this long, so a device
#   call's 600 s limit still returns the log and the finished runs' JSON)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
VENV=${VENV:-.venv-gpu}
SITE=${SITE:-/tmp/site}
CKPT=${CKPT:-/tmp/fish-s1-mini}
OUT=${OUT:-bench/results-gpu}
MODES=${MODES:-eager,compile}
LEVELS=${LEVELS:-1,8,16}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1

if "$VENV/bin/python" -c "import torch, fish_speech, httpx; assert torch.cuda.is_available()" 2>/dev/null; then
  PY="$VENV/bin/python"
elif [ -d .whl ] && python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "installing the $(ls .whl/*.whl | wc -l) wheels of .whl/ into $SITE for $(command -v python3)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  PY=python3
  MAX_TOKENS=${MAX_TOKENS:-100}
  BASELINE_JOBS=${BASELINE_JOBS:-2}
  DEADLINE_S=${DEADLINE_S:-560}
else
  VENV="$VENV" TORCH_SPEC=${TORCH_SPEC:-torch==2.8.0} TORCHAUDIO_SPEC=${TORCHAUDIO_SPEC:-torchaudio==2.8.0} \
    WITH_DEV=0 bash scripts/setup_env.sh
  "$VENV/bin/python" -m pip --disable-pip-version-check -q install "httpx>=0.27"
  PY="$VENV/bin/python"
fi
MAX_TOKENS=${MAX_TOKENS:-200}
BASELINE_JOBS=${BASELINE_JOBS:-4}
DEADLINE_S=${DEADLINE_S:-0}

until_deadline() {  # until_deadline command...: runs it, stopped (exit 124) once DEADLINE_S have passed
  if [ "$DEADLINE_S" -eq 0 ]; then "$@"; return; fi
  local left=$((DEADLINE_S - SECONDS))
  if [ "$left" -le 10 ]; then echo "skipped: the ${DEADLINE_S} s deadline is reached"; return 124; fi
  timeout --signal=INT --kill-after=10 "$left" "$@"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
[ -f "$CKPT/model.pth" ] || "$PY" -m fish_worker.devtools.tiny_checkpoint "$CKPT" --size s1-mini
echo "results in $OUT (max tokens $MAX_TOKENS, levels $LEVELS, fish-speech jobs $BASELINE_JOBS, modes $MODES)"
common=(--device cuda --size s1-mini --checkpoint "$CKPT" --levels "$LEVELS" --max-tokens "$MAX_TOKENS"
        --fish-jobs "$BASELINE_JOBS")
status=0
if [[ ",$MODES," == *,eager,* ]]; then
  echo "== eager =="
  until_deadline "$PY" bench/run.py "${common[@]}" --out "$OUT/eager.json" || status=$?
fi
if [[ ",$MODES," == *,compile,* ]]; then
  echo "== FISH_COMPILE (torch.compile, inductor) =="
  until_deadline "$PY" bench/run.py "${common[@]}" --compile --no-cold-start --out "$OUT/compile.json" || status=$?
fi
echo "results in $OUT: $(cd "$OUT" && ls)"
exit "$status"
