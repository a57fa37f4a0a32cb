"""RunPod serverless entry point for the Fish Speech worker.

    python handler.py                          # worker loop (on RunPod)
    python handler.py --test_input '{"input": {"message": "Hello."}}'   # one local job: prints what RunPod stores
    python handler.py --rp_serve_api           # runpod's local test API on :8000

Configuration comes from FISH_* environment variables (docs/configuration.md). The container runs this in
FISH_SERVE=queue mode, `python -m fish_worker.server` in FISH_SERVE=http mode (docs/runpod.md).
"""

from fish_worker.worker import main

if __name__ == "__main__":
    main()
