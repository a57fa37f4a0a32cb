"""How many seconds of audio fit one RunPod result, per audio_format (no model needed).

    python bench/result_sizes.py

JSON bytes per second of 44.1 kHz mono audio as RunPod's SDK serializes a result (json.dumps, default
separators), for a speech-like signal (voiced syllables at ~4 Hz with pauses, about -20 dBFS RMS) and
for full-scale noise (the worst case). "float (raw)" is the float32 list as it was before rounding;
"float" is the list rounded to 5 decimals (FLOAT_DECIMALS). Also the time json.dumps takes for 20 s.
Not a test: the signal is synthetic, real speech lands between the two rows.
"""

from __future__ import annotations

import json
import time

import numpy as np

from fish_worker.audio.formats import RESULT_LIMIT_BYTES, STREAM_CHUNK_LIMIT_BYTES, clean_samples, encode_audio

RATE = 44_100


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)  # a gliding pitch
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))  # harmonics, falling 6 dB/octave
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2  # ~4 syllables a second
    pauses = (np.sin(2 * np.pi * 0.25 * t) > -0.7).astype(float)  # a pause every 4 s
    audio = voiced * syllables * pauses + 0.003 * rng.standard_normal(t.size)
    return (0.1 * audio / np.sqrt(np.mean(audio**2))).astype(np.float32)  # -20 dBFS RMS


def result_bytes(samples: np.ndarray, fmt: str, raw: bool = False) -> int:
    audio = clean_samples(samples).tolist() if raw else encode_audio(samples, fmt)
    return len(json.dumps({"output": {"audio": audio}}, ensure_ascii=False).encode())


def main() -> None:
    seconds = 20.0
    signals = {
        "speech-like": speech_like(seconds),
        "noise": np.random.default_rng(1).uniform(-1, 1, int(seconds * RATE)).astype(np.float32),
    }
    rows = [("float (raw)", "float", True)] + [
        (f, f, False) for f in ("float", "pcm16", "wav", "flac", "mp3", "opus", "aac")
    ]
    print(
        f"{'format':12} {'signal':12} {'B/sample':>9} {'kB/s':>8} {'s in /run':>10} {'s in /runsync':>14}"
        f" {'s per 1MB chunk':>16}"
    )
    for name, fmt, raw in rows:
        for signal_name, signal in signals.items():
            per_second = result_bytes(signal, fmt, raw) / seconds
            print(
                f"{name:12} {signal_name:12} {per_second / RATE:9.2f} {per_second / 1e3:8.1f}"
                f" {RESULT_LIMIT_BYTES['run'] / per_second:10.1f} {RESULT_LIMIT_BYTES['runsync'] / per_second:14.1f}"
                f" {STREAM_CHUNK_LIMIT_BYTES / per_second:16.2f}"
            )
    started = time.perf_counter()
    json.dumps(encode_audio(signals["speech-like"], "float"))
    print(f"\nrounding + json.dumps of {seconds:.0f} s of float audio: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
