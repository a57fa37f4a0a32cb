"""RunPod serverless entry point for the Fish Speech worker.

    python handler.py                          # worker loop (on RunPod)
    python handler.py --test_input '{"input": {"message": "Hello."}}'   # one local job
    python handler.py --rp_serve_api           # runpod's local test API on :8000

Configuration comes from FISH_* environment variables (see README).
"""

from fish_worker.worker import main

if __name__ == "__main__":
    main()
