#!/usr/bin/env bash
# One command from a fresh clone to a file you can play, on CPU: set up .venv, write the tiny checkpoint,
# run test_input.json through the worker as `python handler.py --test_input` does, write
# out/quickstart.wav (or .mp3/.opus/.flac, as the job's audio_format) and out/quickstart.json (what
# RunPod stores) and print a short summary.
# Arguments go to python -m fish_worker.devtools.quickstart: --test_input '{...}', --raw, --out DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ] && .venv/bin/python -c "import fish_speech, runpod" 2>/dev/null; then
  echo "using the existing .venv (bash scripts/setup_env.sh brings it up to date)"
else
  bash scripts/setup_env.sh
fi
if [ ! -f checkpoints/tiny/model.pth ]; then
  printf 'writing a tiny random checkpoint to checkpoints/tiny... '
  started=$SECONDS
  # fish-speech's codec still calls torch's deprecated weight_norm: a FutureWarning that is not the user's to fix.
  PYTHONWARNINGS=ignore::FutureWarning .venv/bin/python -m fish_worker.devtools.tiny_checkpoint checkpoints/tiny >/dev/null
  echo "done in $((SECONDS - started)) s"
fi
export FISH_CHECKPOINT_DIR=${FISH_CHECKPOINT_DIR:-checkpoints/tiny}
echo "loading the worker from $FISH_CHECKPOINT_DIR and running one job..."
exec .venv/bin/python -m fish_worker.devtools.quickstart "$@"
