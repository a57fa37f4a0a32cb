"""The weights download command fails fast, and helpfully, without network."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def test_no_network_fails_fast_saying_what_to_place_where(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on: connections are refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "0",
        "FISH_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "fish_worker.engine.download", "--timeout", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[1],
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert "could not download fishaudio/openaudio-s1-mini" in result.stderr
    for name in ("codec.pth", "config.json", "model.pth", "special_tokens.json", "tokenizer.tiktoken"):
        assert name in result.stderr
    assert str(tmp_path / "ckpt") in result.stderr
    assert elapsed < 20
