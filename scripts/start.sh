#!/bin/sh
# Container entry point. FISH_SERVE picks how the image serves:
#   queue (default)  RunPod queue endpoint: runpod's worker loop (handler.py), /run /runsync /stream /status
#   http             RunPod load-balancing endpoint or self-hosted: python -m fish_worker.server on $PORT,
#                    GET /ping on $PORT_HEALTH (204 loading, 200 ready, 503 failed)
set -e
cd "$(dirname "$0")/.."
# Weights baked into the image (BAKE_WEIGHTS=true) win over the network volume.
if [ -f /app/checkpoints/openaudio-s1-mini/model.pth ]; then
  export FISH_CHECKPOINT_DIR=/app/checkpoints/openaudio-s1-mini
fi
# Allocator (docs/performance.md "Memory"): jemalloc when installed (the image installs libjemalloc2),
# else glibc with 2 arenas; both keep a long-running worker's RSS flat. An LD_PRELOAD already set wins.
for lib in /usr/lib/*-linux-gnu/libjemalloc.so.2; do
  if [ -z "${LD_PRELOAD:-}" ] && [ -f "$lib" ]; then export LD_PRELOAD="$lib"; fi
done
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
case "${FISH_SERVE:-queue}" in
  queue) exec python -u handler.py "$@" ;;
  http) exec python -u -m fish_worker.server ;;
  *) echo "FISH_SERVE must be 'queue' or 'http'; got '${FISH_SERVE}'" >&2; exit 2 ;;
esac
