"""Benchmark the worker against fish-speech's own generation loop, on one random mid-size checkpoint.

    python bench/run.py [--quick] [--out bench/results.json]

Everything is measured in this one command, on the same checkpoint (written to a temporary directory
by `write_tiny_checkpoint(..., size="bench")`, released layout) and the same machine:

  single stream   decode tokens/s of one request: the worker vs fish-speech's `generate_long`
  concurrency     aggregate tokens/s of 1, 4, 8 jobs (text → audio) submitted at once to the worker vs
                  fish-speech serving the same jobs one after another (`generate_long` + codec decode)
  first audio     time to the first audio chunk of a streamed 3-sentence message vs the latency of the
                  same message not streamed
  cold start      import + load of the worker (fresh process) vs a bare `torch.load` of the same files

A token is one codec frame (all codebooks), ~46 ms of audio. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # fish-speech's decode loop draws a progress bar
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the riverbank.",
    "Meanwhile, the clouds gathered slowly above the quiet little town.",
    "By evening the rain had washed the dusty streets completely clean.",
    "She counted the stars one by one until she finally fell asleep.",
    "Numbers like 42 and 1999 are read aloud exactly as they are written.",
    "A gentle breeze carried the scent of pine trees across the valley.",
    "Every morning the baker opened his shop before the sun came up.",
    "The old clock on the wall ticked steadily through the long night.",
]


def silence_logs() -> None:
    import logging

    from loguru import logger

    logger.remove()  # fish-speech logs every generation at INFO through loguru
    logging.getLogger().setLevel(logging.WARNING)


def fish_speech_tokens(model, text: str, seed: int, max_tokens: int) -> torch.Tensor:
    """fish-speech's own loop (`generate_long`, uncompiled, as its CPU path runs)."""
    from fish_speech.models.text2semantic.inference import decode_one_token_ar, generate_long

    torch.manual_seed(seed)
    responses = generate_long(model=model, device="cpu", decode_one_token=decode_one_token_ar, text=text,
                              max_new_tokens=max_tokens, temperature=0.7, top_p=0.8, repetition_penalty=1.1,
                              prompt_tokens=[])
    return next(r.codes for r in responses if r.action == "sample")


def fish_speech_job(service, text: str, seed: int, max_tokens: int) -> int:
    """One job served the fish-speech way: all tokens, then one codec decode. Returns frames made."""
    codes = fish_speech_tokens(service.generator.model, text, seed, max_tokens)
    with torch.inference_mode():
        service.codec.model.decode(indices=codes[None].long(), feature_lengths=torch.tensor([codes.shape[1]]))
    return int(codes.shape[1])


def request(text: str, seed: int, max_tokens: int, stream: bool = False):
    from fish_worker.tts.requests import SynthesisRequest

    return SynthesisRequest(text=text, seed=seed, frames_per_sentence=max_tokens, stream=stream,
                            temperature=0.7, top_p=0.8, repetition_penalty=1.1)


def worker_job(service, text: str, seed: int, max_tokens: int) -> int:
    """One job through the worker's service (text → audio). Returns frames made."""
    frames = 0
    for chunk in service.synthesize(request(text, seed, max_tokens)):
        frames += len(chunk.audio) // service.codec.samples_per_frame
    return frames


def bench_single_stream(service, max_tokens: int) -> dict:
    text, seed = SENTENCES[0], 0
    fish_speech_tokens(service.generator.model, "Warm up.", 0, 4)  # first-call costs out of the timing
    list(service.generator.generate("Warm up.", [], _params(4), torch.Generator().manual_seed(0)))

    # Alternate the two and keep each one's best time: other load on the machine hits both alike.
    theirs_s = ours_s = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        theirs = fish_speech_tokens(service.generator.model, text, seed, max_tokens)
        theirs_s = min(theirs_s, time.perf_counter() - started)
        started = time.perf_counter()
        ours = list(service.generator.generate(text, [], _params(max_tokens), torch.Generator().manual_seed(seed)))
        ours_s = min(ours_s, time.perf_counter() - started)
    # fish-speech drops the frame it stops on when the budget ends; the ones both made must agree.
    same = torch.equal(torch.stack(ours, dim=1)[:, : theirs.shape[1]], theirs)
    worker_tps, fish_tps = len(ours) / ours_s, theirs.shape[1] / theirs_s
    return {"worker_tokens_per_s": worker_tps, "fish_speech_tokens_per_s": fish_tps,
            "ratio": worker_tps / fish_tps, "tokens": len(ours), "same_tokens": same}


def _params(max_tokens: int):
    from fish_worker.engine.sampling import SamplingParams

    return SamplingParams(0.7, 0.8, 1.1, max_tokens)


def bench_concurrency(service, max_tokens: int, levels: list[int]) -> dict:
    jobs = [(SENTENCES[i % len(SENTENCES)], 100 + i) for i in range(max(levels))]
    # fish-speech one after another: the time for the first n jobs is the sum of their times.
    fish_times, fish_frames = [], []
    for text, seed in jobs:
        started = time.perf_counter()
        fish_frames.append(fish_speech_job(service, text, seed, max_tokens))
        fish_times.append(time.perf_counter() - started)

    results = {}
    for n in levels:
        frames = [0] * n

        def run(i: int) -> None:
            frames[i] = worker_job(service, *jobs[i], max_tokens)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        worker_s = time.perf_counter() - started
        worker_tps = sum(frames) / worker_s
        fish_tps = sum(fish_frames[:n]) / sum(fish_times[:n])
        results[str(n)] = {"worker_tokens_per_s": worker_tps, "fish_speech_sequential_tokens_per_s": fish_tps,
                           "ratio": worker_tps / fish_tps, "tokens": sum(frames), "worker_s": worker_s,
                           "fish_speech_s": sum(fish_times[:n])}
    return results


def bench_first_audio(service, max_tokens: int) -> dict:
    message = " ".join(SENTENCES[:3])
    started = time.perf_counter()
    chunks = list(service.synthesize(request(message, 7, max_tokens, stream=False)))
    full_s = time.perf_counter() - started
    started = time.perf_counter()
    first_s = None
    streamed = []
    for chunk in service.synthesize(request(message, 7, max_tokens, stream=True)):
        if first_s is None:
            first_s = time.perf_counter() - started
        streamed.append(chunk)
    stream_total_s = time.perf_counter() - started
    audio = np.concatenate([c.audio for c in chunks])
    streamed_audio = np.concatenate([c.audio for c in streamed])
    same = audio.shape == streamed_audio.shape and float(np.max(np.abs(audio - streamed_audio))) < 1e-3
    return {"first_audio_s": first_s, "full_latency_s": full_s, "ratio": first_s / full_s,
            "stream_total_s": stream_total_s, "chunks": len(streamed), "audio_s": len(audio) / service.sample_rate,
            "streamed_equals_one_shot": same}


def _timed_subprocess(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return float(out.stdout.strip().splitlines()[-1])


def bench_cold_start(checkpoint: Path) -> dict:
    worker = _timed_subprocess(
        "import time; t = time.perf_counter()\n"
        "from fish_worker.tts.service import TTSService\nfrom fish_worker.settings import Settings\n"
        f"TTSService.load(Settings(checkpoint_dir={str(checkpoint)!r}, device='cpu', warmup=False))\n"
        "print(time.perf_counter() - t)")
    bare = _timed_subprocess(
        "import time; t = time.perf_counter()\nimport torch\n"
        f"for f in ('model.pth', 'codec.pth'): torch.load({str(checkpoint)!r} + '/' + f, map_location='cpu')\n"
        "print(time.perf_counter() - t)")
    return {"worker_import_and_load_s": worker, "bare_torch_load_s": bare, "ratio": worker / bare}


def print_table(results: dict) -> None:
    rows = [("single stream tokens/s", results["single_stream"]["worker_tokens_per_s"],
             results["single_stream"]["fish_speech_tokens_per_s"], results["single_stream"]["ratio"])]
    for n, r in results["concurrency"].items():
        rows.append((f"{n} concurrent jobs tokens/s", r["worker_tokens_per_s"],
                     r["fish_speech_sequential_tokens_per_s"], r["ratio"]))
    fa = results["first_audio"]
    rows.append(("first audio s (vs full latency)", fa["first_audio_s"], fa["full_latency_s"], fa["ratio"]))
    cs = results["cold_start"]
    rows.append(("cold start s (vs bare torch.load)", cs["worker_import_and_load_s"], cs["bare_torch_load_s"], cs["ratio"]))
    print(f"\n{'measure':<36}{'worker':>12}{'baseline':>12}{'ratio':>9}")
    for name, ours, base, ratio in rows:
        print(f"{name:<36}{ours:>12.3f}{base:>12.3f}{ratio:>8.2f}x")
    print(f"\nsame tokens as fish-speech: {results['single_stream']['same_tokens']}; "
          f"streamed audio equals one-shot: {fa['streamed_equals_one_shot']} ({fa['chunks']} chunks)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer tokens per job (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args()
    max_tokens = 16 if args.quick else 48
    silence_logs()

    from fish_worker.tts.service import TTSService
    from fish_worker.settings import Settings
    from fish_worker.devtools.tiny_checkpoint import write_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_tiny_checkpoint(Path(tmp) / "bench-ckpt", seed=0, size="bench")
        settings = Settings(checkpoint_dir=checkpoint, device="cpu", warmup=False, max_concurrency=8)
        service = TTSService.load(settings)
        silence_logs()
        results = {
            "machine": {"device": "cpu", "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
            "checkpoint": {"size": "bench", "max_tokens_per_job": max_tokens,
                           "parameters_m": round(sum(p.numel() for p in service.generator.model.parameters()) / 1e6, 1)},
            "single_stream": bench_single_stream(service, max_tokens),
            "concurrency": bench_concurrency(service, max_tokens, [1, 4, 8]),
            "first_audio": bench_first_audio(service, max_tokens),
            "cold_start": bench_cold_start(checkpoint),
        }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
