"""Streamed codec decode vs one decode of the whole sentence: error, cost per window, memory per stream.

    python bench/stream_decode.py [--size tiny|bench|s1-mini] [--frames 300] [--device cpu|cuda]
                                  [--checkpoint DIR] [--old]

Random codes of one sentence are decoded once whole (`Codec.decode`, fish-speech's `DAC.decode`) and
once in the worker's streaming windows (8, 16, 32, then 64 frames: `IncrementalDecoder` with the
default settings), on a random checkpoint written by `write_tiny_checkpoint(..., size=...)`. Reported:
the largest difference and the SNR of the streamed audio against the whole decode, the time of each
window split into the quantizer's transformer step (the stream's state) and the convolutions, and the
memory a stream holds between windows. `--old` also decodes the windows the way the worker did before
`CodecStream` (16 frames of left context and no state), for comparison. Exits 1 if the streamed audio
is not the whole decode (fp32: max |diff| > 1e-4; lower precision: SNR < 30 dB).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fish_worker.devtools.tiny_checkpoint import write_tiny_checkpoint  # noqa: E402
from fish_worker.engine.checkpoint import load_codec  # noqa: E402
from fish_worker.engine.codec import Codec  # noqa: E402
from fish_worker.engine.incremental_decode import IncrementalDecoder  # noqa: E402


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = float(np.sum((reference - other) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(reference**2)) / noise)


def random_codes(codec: Codec, frames: int, seed: int = 0) -> torch.Tensor:
    quantizer = codec.model.quantizer
    generator = torch.Generator().manual_seed(seed)
    semantic = torch.randint(0, quantizer.semantic_quantizer.codebook_size, (1, frames), generator=generator)
    residual = torch.randint(
        0, quantizer.quantizer.codebook_size, (quantizer.quantizer.n_codebooks, frames), generator=generator
    )
    return torch.cat([semantic, residual])


def streamed(codec: Codec, codes: torch.Tensor) -> tuple[np.ndarray, list[dict], int]:
    """The windows' audio joined, each window's timings, and the stream's state between windows."""
    conv_s: list[float] = []
    decode_window = codec.decode_window

    def timed_decode_window(latent):
        started = time.perf_counter()
        audio = decode_window(latent)
        conv_s.append(time.perf_counter() - started)
        return audio

    codec.decode_window = timed_decode_window  # this instance only
    decoder = IncrementalDecoder(codec)
    windows, pieces, state_bytes = [], [], 0
    started = time.perf_counter()
    for frame in [*codes.T, None]:
        audio = decoder.push(frame) if frame is not None else decoder.flush()
        if audio is None:
            continue
        total = time.perf_counter() - started
        frames = len(audio) // codec.samples_per_frame
        windows.append({"frames": frames, "total_s": total, "conv_s": conv_s[-1], "transformer_s": total - conv_s[-1]})
        pieces.append(audio)
        state_bytes = max(state_bytes, decoder._stream.state_bytes)
        started = time.perf_counter()
    del codec.decode_window
    return np.concatenate(pieces), windows, state_bytes


def old_windows(codec: Codec, codes: torch.Tensor, context: int = 16) -> np.ndarray:
    """The decode before CodecStream: each window with `context` frames before it, no other state."""
    pieces, done, window = [], 0, 8
    while done < codes.shape[1]:
        end = min(done + window, codes.shape[1])
        audio = codec.decode(codes[:, max(0, done - context) : end])
        pieces.append(audio[-(end - done) * codec.samples_per_frame :])
        done, window = end, min(window * 2, 64)
    return np.concatenate(pieces)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "bench", "s1-mini"], default="s1-mini")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", type=Path, default=None, help="reuse a written checkpoint directory")
    parser.add_argument("--old", action="store_true", help="also measure the stateless 16-frame-context windows")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    device = torch.device(args.device)
    precision = torch.bfloat16 if device.type == "cuda" else torch.float32

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or Path(tmp) / f"{args.size}-ckpt"
        if not (checkpoint / "codec.pth").is_file():
            write_tiny_checkpoint(checkpoint, seed=0, size=args.size)
        codec = Codec(load_codec(checkpoint, device), device, precision)
    codes = random_codes(codec, args.frames)
    codec.decode(codes[:, :8])  # warm-up
    started = time.perf_counter()
    whole = codec.decode(codes)
    whole_s = time.perf_counter() - started
    audio, windows, state_bytes = streamed(codec, codes)
    post = codec.model.quantizer.post_module
    results = {
        "size": args.size,
        "device": str(device),
        "precision": str(precision),
        "frames": args.frames,
        "post_module": {"layers": len(post.layers), "window": post.window_size, "dim": post.config.dim},
        "one_shot_s": whole_s,
        "streamed_s": sum(w["total_s"] for w in windows),
        "windows": windows,
        "max_abs_diff": float(np.max(np.abs(audio - whole))),
        "snr_db": snr_db(whole, audio),
        "peak": float(np.max(np.abs(whole))),
        "state_bytes_per_stream": state_bytes,
    }
    if args.old:
        old = old_windows(codec, codes)
        results["old_max_abs_diff"] = float(np.max(np.abs(old - whole)))
        results["old_snr_db"] = snr_db(whole, old)
    exact = results["max_abs_diff"] <= 1e-4 if precision == torch.float32 else results["snr_db"] >= 30
    results["streamed_equals_one_shot"] = exact
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{args.size} codec ({results['post_module']}), {args.frames} frames, {device} {precision}")
    print(f"one-shot decode {whole_s:.2f} s; streamed {results['streamed_s']:.2f} s in {len(windows)} windows")
    for w in windows:
        print(
            f"  window {w['frames']:>3} frames: {w['total_s']:.3f} s (transformer step {w['transformer_s']:.3f} s, "
            f"convolutions {w['conv_s']:.3f} s)"
        )
    print(
        f"streamed vs one-shot: max |diff| {results['max_abs_diff']:.2e} (peak {results['peak']:.3f}), "
        f"SNR {results['snr_db']:.1f} dB; state per stream {state_bytes / 1e6:.2f} MB"
    )
    if args.old:
        print(
            f"old (16 frames of context, no state): max |diff| {results['old_max_abs_diff']:.2e}, "
            f"SNR {results['old_snr_db']:.1f} dB"
        )
    print(f"streamed audio equals one-shot: {exact}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
