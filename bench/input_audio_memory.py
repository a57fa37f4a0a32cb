"""Peak memory and time of the input-audio decoder (fish_worker/audio/reference.py) on decompression bombs.

    python bench/input_audio_memory.py [--max-seconds 30] [--before]

Each case runs in a fresh Python process: its RSS is read before one `decode_audio_file` call and
its peak (VmHWM, reset just before) after it, at the codec rate (44.1 kHz), with PyAV already imported, so the difference is
what decoding that file cost. Cases: a 60-minute constant FLAC (~490 kB) that states its length, the
same with its length field cleared (decoding must stop at the limit), a 10-minute MP3 (~2.4 MB), and a
clip at the limit (96 kHz stereo FLAC) for scale. Numbers are quoted in docs/limits.md. Not a test.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile

import numpy as np
import soundfile as sf

RATE = 44100


def constant_flac(seconds: int, state_length: bool) -> bytes:
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", RATE, 1, format="FLAC", subtype="PCM_16") as f:
        block = np.full(RATE * 10, 0.25, dtype=np.float32)
        for _ in range(seconds // 10):
            f.write(block)
    data = bytearray(buf.getvalue())
    if not state_length:  # STREAMINFO's total-samples field (low 36 bits of bytes 18-25): 0 = unknown
        data[18:26] = (int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)).to_bytes(8, "big")
    return bytes(data)


def tone_file(seconds: float, rate: int, channels: int, fmt: str) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.stack([mono] * channels, axis=1), rate, format=fmt)
    return buf.getvalue()


MEASURE = """
import sys, time
import av  # imported before the baseline: its libraries are not the decoder's cost
from fish_worker.audio.reference import decode_audio_file
from fish_worker.errors import JobInputError

def status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

data = open(sys.argv[1], "rb").read()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current RSS
before = status_kb("VmRSS")
started = time.perf_counter()
try:
    if sys.argv[3] == "whole":  # what the Fish doors did before: read it all, then write it as WAV
        import io, soundfile as sf
        with sf.SoundFile(io.BytesIO(data)) as clip:
            samples, rate = clip.read(dtype="float32", always_2d=True), clip.samplerate
        sf.write(io.BytesIO(), samples, rate, format="WAV", subtype="FLOAT")
        outcome = f"read whole: {len(samples) / rate:.0f} s"
    else:
        outcome = f"accepted, {len(decode_audio_file(data, 44100, float(sys.argv[2]))) / 44100:.1f} s"
except JobInputError as exc:
    outcome = str(exc)
except Exception as exc:
    outcome = f"{type(exc).__name__}: {str(exc)[:60]}"
took = time.perf_counter() - started
print(f"{(status_kb('VmHWM') - before) / 1024:.1f}\\t{took:.2f}\\t{outcome}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument(
        "--before",
        action="store_true",
        help="also measure reading each file whole with soundfile (the Fish doors' way before)",
    )
    args = parser.parse_args()
    cases = {
        "60-min constant FLAC, length stated": constant_flac(3600, state_length=True),
        "60-min constant FLAC, length hidden": constant_flac(3600, state_length=False),
        "10-min MP3 (440 Hz tone)": tone_file(600, RATE, 1, "MP3"),
        f"{args.max_seconds:g}-s 96 kHz stereo FLAC (at the limit)": tone_file(args.max_seconds, 96000, 2, "FLAC"),
    }
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    print(f"{'case':<44} {'file':>9} {'+peak RSS':>10} {'time':>7}  outcome")
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in cases.items():
            path = os.path.join(tmp, "clip")
            with open(path, "wb") as f:
                f.write(data)
            for mode in ("decoder", "whole") if args.before else ("decoder",):
                out = subprocess.run(
                    [sys.executable, "-c", MEASURE, path, str(args.max_seconds), mode],
                    cwd=root,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
                rss_mb, took, outcome = out.split("\t")
                label = name if mode == "decoder" else "  ... read whole with soundfile (before)"
                print(f"{label:<44} {len(data) / 1000:>7.0f} kB {rss_mb:>7} MB {took:>6} s  {outcome}")


if __name__ == "__main__":
    main()
