#!/usr/bin/env bash
# One command from a fresh clone to a real job on CPU: set up .venv, write the tiny checkpoint,
# run test_input.json through handler.py. Extra arguments go to handler.py (e.g. --test_input '{...}').
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && .venv/bin/python -c "import fish_speech, runpod" 2>/dev/null || bash scripts/setup_env.sh
[ -f checkpoints/tiny/model.pth ] || .venv/bin/python -m fish_worker.devtools.tiny_checkpoint checkpoints/tiny
export FISH_CHECKPOINT_DIR=${FISH_CHECKPOINT_DIR:-checkpoints/tiny}
exec .venv/bin/python handler.py "$@"
