#!/usr/bin/env bash
# Create .venv with everything the worker and its tests need, CPU-only, in about a minute.
#
#   TORCH_SPEC      torch to install (default torch==2.13.0: a 190 MB CPU wheel; on this project's
#                   machines it lies on disk, elsewhere pip fetches the CUDA build from PyPI unless
#                   you point pip at the CPU index: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu)
#   TORCHAUDIO_SPEC torchaudio to install without deps (default torchaudio==2.11.0, the last on PyPI)
#   VENV            where to create the venv (default .venv)
#   WITH_DEV        1 (default) also installs the test tools of requirements-dev.txt; 0 for images
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCHAUDIO_SPEC=${TORCHAUDIO_SPEC:-torchaudio==2.11.0}
WITH_DEV=${WITH_DEV:-1}

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
PIP="$PY -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip
$PIP install "$TORCH_SPEC"
# torchaudio's PyPI wheels pin the torch they were built with and link a CUDA build of it. fish-speech
# only needs torchaudio's pure-Python parts (imports, resampling helpers), so install it without deps
# and, when its compiled extension cannot load against this torch, drop the extension.
$PIP install --no-deps "$TORCHAUDIO_SPEC"
if ! "$PY" -c "import torchaudio" 2>/dev/null; then
  lib=$("$PY" -c "import importlib.util,os;print(os.path.join(os.path.dirname(importlib.util.find_spec('torchaudio').origin),'lib'))")
  echo "torchaudio's compiled extension does not load against this torch: using its pure-Python parts ($lib removed)"
  rm -rf "$lib"
  "$PY" -c "import torchaudio"
fi
$PIP install -r requirements.txt
[ "$WITH_DEV" = 0 ] || $PIP install -r requirements-dev.txt
$PIP install --no-deps -r requirements-nodeps.txt
"$PY" -c "import fish_speech.models.text2semantic.llama, fish_speech.models.dac.modded_dac; print('fish-speech inference imports OK')"
