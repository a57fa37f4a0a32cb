#!/usr/bin/env bash
# Create .venv-clients: the third-party voice-agent clients (LiveKit's Fish Audio plugin, pipecat's
# FishAudioTTSService) that tests/test_third_party_clients.py drives against the server. Kept apart from
# .venv because they pin versions the worker cannot use. ~700 MB, in about 10 s: uv installs the ~100
# pinned packages in parallel (pip took 2-4 min here, querying the index one package at a time).
#
#   CLIENTS_VENV   where to create it (default .venv-clients)
#
# Re-running it on an up-to-date venv does nothing: it reinstalls only when requirements-clients.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CLIENTS_VENV:-.venv-clients}
STAMP="$VENV/.requirements-clients.txt"
if [ -x "$VENV/bin/python" ] && cmp -s requirements-clients.txt "$STAMP"; then
  echo "clients venv $VENV is up to date"
  exit 0
fi
started=$SECONDS
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
LOG="$VENV/setup.log"
printf 'installing the third-party clients (requirements-clients.txt) into %s... ' "$VENV"
if "$VENV/bin/python" -m pip --disable-pip-version-check -q install uv==0.13.9 >"$LOG" 2>&1 &&
   "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" -r requirements-clients.txt >>"$LOG" 2>&1; then
  cp requirements-clients.txt "$STAMP"
  echo "done in $((SECONDS - started)) s"
else
  echo "FAILED after $((SECONDS - started)) s; the last lines of $LOG:"
  tail -n 30 "$LOG"
  exit 1
fi
