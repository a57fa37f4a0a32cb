#!/usr/bin/env bash
# Create .venv with everything the worker and its tests need, CPU-only, in a few minutes.
#
#   TORCH_SPEC      torch to install (default torch==2.13.0: a 190 MB CPU wheel; on this project's
#                   machines it lies on disk, elsewhere pip fetches the CUDA build from PyPI unless
#                   you point pip at the CPU index: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu)
#   TORCHAUDIO_SPEC torchaudio to install without deps (default torchaudio==2.11.0, the last on PyPI)
#   VENV            where to create the venv (default .venv)
#   WITH_DEV        1 (default) also installs the test tools of requirements-dev.txt; 0 for images
#
# Each step prints one line with its duration; pip's own output goes to $VENV/setup.log and is
# shown only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCHAUDIO_SPEC=${TORCHAUDIO_SPEC:-torchaudio==2.11.0}
WITH_DEV=${WITH_DEV:-1}

if [ ! -x "$VENV/bin/python" ]; then
  printf 'creating the virtual environment %s... ' "$VENV"
  started=$SECONDS
  python3 -m venv "$VENV"
  echo "done in $((SECONDS - started)) s"
fi
PY="$VENV/bin/python"
LOG="$VENV/setup.log"
: > "$LOG"

step() {  # step "what it does" command...
  local what=$1 started=$SECONDS
  shift
  printf '%s... ' "$what"
  if "$@" >>"$LOG" 2>&1; then
    echo "done in $((SECONDS - started)) s"
  else
    echo "FAILED after $((SECONDS - started)) s; the last lines of $LOG:"
    tail -n 30 "$LOG"
    exit 1
  fi
}
pip_install() { "$PY" -m pip --disable-pip-version-check -q install "$@"; }

# torchaudio's PyPI wheels pin the torch they were built with and link a CUDA build of it. fish-speech
# only needs torchaudio's pure-Python parts (imports, resampling helpers), so it is installed without
# deps and, when its compiled extension cannot load against this torch, the extension is dropped.
torchaudio_pure_python() {
  "$PY" -c "import torchaudio" && return 0
  local lib
  lib=$("$PY" -c "import importlib.util,os;print(os.path.join(os.path.dirname(importlib.util.find_spec('torchaudio').origin),'lib'))")
  echo "torchaudio's compiled extension does not load against this torch: removing $lib"
  rm -rf "$lib"
  "$PY" -c "import torchaudio"
}

step "upgrading pip" pip_install --upgrade pip
# numpy with torch: torch warns at import when numpy is missing.
step "installing $TORCH_SPEC (CPU wheel here: ~190 MB) and numpy" pip_install "$TORCH_SPEC" "numpy>=1.26,<3"
step "installing $TORCHAUDIO_SPEC without its dependencies" pip_install --no-deps "$TORCHAUDIO_SPEC"
step "checking torchaudio loads against this torch" torchaudio_pure_python
step "installing the worker's dependencies (requirements.txt)" pip_install -r requirements.txt
[ "$WITH_DEV" = 0 ] || step "installing the test tools (requirements-dev.txt)" pip_install -r requirements-dev.txt
step "installing fish-speech and its codec packages without their dependencies" \
  pip_install --no-deps -r requirements-nodeps.txt
step "checking fish-speech's inference modules import" \
  "$PY" -c "import fish_speech.models.text2semantic.llama, fish_speech.models.dac.modded_dac"
echo "set-up complete: $VENV ($(du -sh "$VENV" | cut -f1)); pip's output is in $LOG"
