"""Benchmark the worker against fish-speech's own generation loop, on one random checkpoint.

    python bench/run.py [--size bench|s1-mini] [--device cpu|cuda] [--compile] [--levels 1,4,8]
                        [--quick] [--max-tokens N] [--out bench/results.json]

Everything is measured in this one command, on the same checkpoint (written to a temporary directory
by `write_tiny_checkpoint(..., size=...)`, released layout: "bench" is a mid-size model for 2 CPU
cores, "s1-mini" the released openaudio-s1-mini shapes) and the same machine:

  single stream   decode tokens/s of one request: the worker vs fish-speech's `generate_long`; RTF
  concurrency     aggregate tokens/s of N jobs (text → audio) submitted at once to the worker vs
                  fish-speech serving the same jobs one after another (`generate_long` + codec decode)
  end to end      N jobs through `JobRunner` (the RunPod handler) and through the self-hosted server
                  on 127.0.0.1 (POST /run, float audio in JSON): at once vs one after another
  first audio     time to the first audio chunk of a streamed 3-sentence message vs the latency of the
                  same message not streamed
  cold start      import + load of the worker (fresh process) vs a bare `torch.load` of the same files
  memory          peak memory (GPU: torch's peak allocation; CPU: peak RSS) and the KV cache per job

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


FISH_DECODE_ONE_TOKEN = None  # fish-speech's decode step: plain, or compiled as its init_model compiles it


def fish_speech_tokens(model, text: str, seed: int, max_tokens: int) -> torch.Tensor:
    """fish-speech's own loop (`generate_long`; compiled with --compile, as its GPU path runs)."""
    from fish_speech.models.text2semantic.inference import decode_one_token_ar, generate_long

    device = next(model.parameters()).device
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)
    responses = generate_long(
        model=model,
        device=device,
        decode_one_token=FISH_DECODE_ONE_TOKEN or decode_one_token_ar,
        text=text,
        max_new_tokens=max_tokens,
        temperature=0.7,
        top_p=0.8,
        repetition_penalty=1.1,
        prompt_tokens=[],
    )
    return next(r.codes for r in responses if r.action == "sample").cpu()


def fish_speech_job(service, text: str, seed: int, max_tokens: int) -> int:
    """One job served the fish-speech way: all tokens, then one codec decode. Returns frames made."""
    codes = fish_speech_tokens(service.generator.model, text, seed, max_tokens)
    service.codec.decode(codes)
    return int(codes.shape[1])


def request(text: str, seed: int, max_tokens: int, stream: bool = False):
    from fish_worker.tts.requests import SynthesisRequest

    return SynthesisRequest(
        text=text,
        seed=seed,
        frames_per_sentence=max_tokens,
        stream=stream,
        temperature=0.7,
        top_p=0.8,
        repetition_penalty=1.1,
    )


def worker_job(service, text: str, seed: int, max_tokens: int) -> int:
    """One job through the worker's service (text → audio). Returns frames made."""
    frames = 0
    for chunk in service.synthesize(request(text, seed, max_tokens)):
        frames += len(chunk.audio) // service.codec.samples_per_frame
    return frames


def bench_single_stream(service, max_tokens: int) -> dict:
    text, seed = SENTENCES[0], 0
    fish_speech_tokens(service.generator.model, "Warm up.", 0, 4)  # first-call costs out of the timing
    list(
        service.generator.generate("Warm up.", [], _params(4), torch.Generator(service.generator.device).manual_seed(0))
    )

    # Alternate the two and keep each one's best time: other load on the machine hits both alike.
    theirs_s = ours_s = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        theirs = fish_speech_tokens(service.generator.model, text, seed, max_tokens)
        theirs_s = min(theirs_s, time.perf_counter() - started)
        started = time.perf_counter()
        ours = list(
            service.generator.generate(
                text, [], _params(max_tokens), torch.Generator(service.generator.device).manual_seed(seed)
            )
        )
        ours_s = min(ours_s, time.perf_counter() - started)
    # fish-speech drops the frame it stops on when the budget ends; the ones both made must agree.
    same = torch.equal(torch.stack(ours, dim=1).cpu()[:, : theirs.shape[1]], theirs)
    worker_tps, fish_tps = len(ours) / ours_s, theirs.shape[1] / theirs_s
    # Real-time factor of a whole job (tokens, then audio): seconds of work per second of audio.
    started = time.perf_counter()
    frames = worker_job(service, text, seed, max_tokens)
    rtf = (time.perf_counter() - started) / (frames * service.codec.samples_per_frame / service.sample_rate)
    return {
        "worker_tokens_per_s": worker_tps,
        "fish_speech_tokens_per_s": fish_tps,
        "ratio": worker_tps / fish_tps,
        "tokens": len(ours),
        "same_tokens": same,
        "worker_rtf": rtf,
    }


def _params(max_tokens: int):
    from fish_worker.engine.sampling import SamplingParams

    return SamplingParams(0.7, 0.8, 1.1, max_tokens)


def bench_concurrency(service, max_tokens: int, levels: list[int], fish_jobs: int = 8) -> dict:
    jobs = [(SENTENCES[i % len(SENTENCES)], 100 + i) for i in range(max(levels))]
    # fish-speech one after another: the time for the first n jobs is the sum of their times (at most
    # `fish_jobs` are run: one after another, its rate does not depend on how many follow).
    fish_times, fish_frames = [], []
    for text, seed in jobs[:fish_jobs]:
        started = time.perf_counter()
        fish_frames.append(fish_speech_job(service, text, seed, max_tokens))
        fish_times.append(time.perf_counter() - started)

    # Warm: the first batched steps of each batch size (and compiled graphs) out of the timing.
    warm = [threading.Thread(target=worker_job, args=(service, text, seed, 4)) for text, seed in jobs]
    for t in warm:
        t.start()
    for t in warm:
        t.join()
    results = {}
    for n in levels:
        frames = [0] * n

        def run(i: int, frames: list[int] = frames) -> None:  # this iteration's list
            frames[i] = worker_job(service, *jobs[i], max_tokens)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        worker_s = time.perf_counter() - started
        worker_tps = sum(frames) / worker_s
        fish_tps = sum(fish_frames[:n]) / sum(fish_times[:n])  # the first min(n, fish_jobs) jobs
        results[str(n)] = {
            "worker_tokens_per_s": worker_tps,
            "fish_speech_sequential_tokens_per_s": fish_tps,
            "ratio": worker_tps / fish_tps,
            "tokens": sum(frames),
            "worker_s": worker_s,
            "fish_speech_s": sum(fish_times[:n]),
        }
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
    same = audio.shape == streamed_audio.shape
    max_diff = float(np.max(np.abs(audio - streamed_audio))) if same else float("inf")
    snr = snr_db(audio, streamed_audio) if same else float("-inf")
    # fp32: the same samples to float rounding; bf16/fp16 (GPU): rounding differs with the window's
    # shapes, so the SNR decides (a stateless window decode measured 2.3 dB at S1-mini shapes).
    if service.codec.precision == torch.float32 or service.codec.device.type != "cuda":
        same = same and max_diff <= 1e-4
    else:
        same = same and snr >= 30
    return {
        "first_audio_s": first_s,
        "full_latency_s": full_s,
        "ratio": first_s / full_s,
        "stream_total_s": stream_total_s,
        "chunks": len(streamed),
        "audio_s": len(audio) / service.sample_rate,
        "streamed_equals_one_shot": same,
        "streamed_max_abs_diff": max_diff,
        "streamed_snr_db": snr,
    }


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = float(np.sum((reference - other) ** 2))
    return float("inf") if noise == 0 else float(10 * np.log10(float(np.sum(reference**2)) / noise))


REPEATS = 2  # end-to-end measures: best of this many


def bench_end_to_end(service, settings, max_tokens: int, n: int) -> dict:
    """n jobs through JobRunner (the RunPod handler) and through the server on 127.0.0.1: at once vs
    one after another. Float audio, the costliest format to carry: JSON numbers."""
    import asyncio

    from fish_worker.jobs.job import Job
    from fish_worker.jobs.runner import JobRunner

    runner = JobRunner(service, settings)
    jobs = [
        {
            "message": SENTENCES[i % len(SENTENCES)],
            "seed": 300 + i,
            "max_tokens": max_tokens,
            "temperature": 0.7,
            "top_p": 0.8,
            "repetition_penalty": 1.1,
        }
        for i in range(n)
    ]

    async def one(job: dict) -> int:
        output = await runner.result(Job(id="bench", input=job))
        assert "error" not in output, output
        return len(output["audio"])

    async def sequential() -> None:
        for job in jobs:
            await one(job)

    async def together() -> None:
        await asyncio.gather(*(one(job) for job in jobs))

    asyncio.run(one(jobs[0]))  # warm
    # Each measure is the best of REPEATS, alternating, so a slow spell of the machine (seen here: the same
    # sequential run taking 12.5 s or 19.6 s) does not decide the ratio.
    runner_seq, runner_par = [], []
    for _ in range(REPEATS):
        runner_seq.append(_timed(lambda: asyncio.run(sequential())))
        runner_par.append(_timed(lambda: asyncio.run(together())))
    runner_seq, runner_par = min(runner_seq), min(runner_par)
    server_seq, server_par = _server_times(runner, jobs)
    batcher = service.codec.batcher  # FISH_CODEC_BATCH_FRAMES: decodes per batched codec call, over the whole run
    codec = {"decodes": batcher.requests, "batches": batcher.batches} if batcher is not None else None
    return {
        "jobs": n,
        "max_tokens": max_tokens,
        "codec_batching": codec,
        "job_runner": {"sequential_s": runner_seq, "concurrent_s": runner_par, "ratio": runner_seq / runner_par},
        "server": {"sequential_s": server_seq, "concurrent_s": server_par, "ratio": server_seq / server_par},
    }


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _server_times(runner, jobs: list[dict]) -> tuple[float, float]:
    """The self-hosted server (uvicorn, 127.0.0.1, a free port) and an HTTP client: (one after another, at once)."""
    import asyncio
    import socket

    import httpx
    import uvicorn

    from fish_worker.server.app import create_app
    from fish_worker.settings import ServerSettings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(
        runner,
        runner.settings.model_copy(
            update={"server": ServerSettings(auth_disabled=True, max_concurrent_jobs=len(jobs))}
        ),
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/run"

    async def post(client, job: dict) -> None:
        response = await client.post(url, json={"input": job})
        response.raise_for_status()
        assert response.json()["status"] == "success"

    async def sequential() -> None:
        async with httpx.AsyncClient(timeout=3600) as client:
            for job in jobs:
                await post(client, job)

    async def together() -> None:
        async with httpx.AsyncClient(timeout=3600) as client:
            await asyncio.gather(*(post(client, job) for job in jobs))

    try:
        asyncio.run(sequential())  # warm (first request costs)
        times = [
            (_timed(lambda: asyncio.run(sequential())), _timed(lambda: asyncio.run(together()))) for _ in range(REPEATS)
        ]
        return min(t[0] for t in times), min(t[1] for t in times)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def kv_memory(service) -> dict:
    """KV cache per job from the allocated pool, and the jobs that fit a card at these shapes in bf16."""
    from fish_worker.engine import kv_budget
    from fish_worker.engine.batched_forward import PagedKVCache

    model, pool = service.generator.model, service.generator.caches
    measured_per_token = pool.nbytes // ((pool.pages + 1) * pool.page_size)  # this run's dtype
    per_token_bf16 = PagedKVCache.bytes_per_token(model, torch.bfloat16)
    probe = PagedKVCache(model, slots=1, pages=2, dtype=torch.bfloat16, device=torch.device("cpu"))
    assert probe.nbytes == 3 * probe.page_size * per_token_bf16  # allocated bytes match the formula
    typical = kv_budget.TYPICAL_JOB_TOKENS
    weights_bf16 = sum(p.numel() for p in model.parameters()) * 2
    codec_bytes = sum(t.nbytes for t in service.codec.model.state_dict().values())  # float32, as served
    # A prefill's batch-1 cache is as long as its prompt and lives only while it runs: in the workspace.
    fixed = weights_bf16 + codec_bytes
    cards = {f"{gb}GB": int(kv_budget.jobs_that_fit(gb * 10**9, fixed, per_token_bf16)) for gb in (24, 48, 80)}
    full_context = {
        f"{gb}GB": int(kv_budget.jobs_that_fit(gb * 10**9, fixed, per_token_bf16, model.config.max_seq_len))
        for gb in (24, 48, 80)
    }
    return {
        "bytes_per_token_bf16": per_token_bf16,
        "bytes_per_token_this_run": int(measured_per_token),
        "typical_job_tokens": typical,
        "typical_job_bytes_bf16": typical * per_token_bf16,
        "text2semantic_bf16_bytes": weights_bf16,
        "codec_bytes": codec_bytes,
        "typical_jobs_per_card": cards,
        "full_context_jobs_per_card": full_context,
        "pool_tokens": pool.pages * pool.page_size,
        "max_concurrency": service.max_concurrency,
    }


def peak_memory(device: torch.device) -> dict:
    import resource

    out = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    if device.type == "cuda":
        out["peak_gpu_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        out["peak_gpu_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 1e9
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def _timed_subprocess(code: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return float(out.stdout.strip().splitlines()[-1])


def bench_cold_start(checkpoint: Path, device: str) -> dict:
    """Each in a fresh process, with the files in the page cache (each is run once first)."""
    worker = (
        "import time; t = time.perf_counter()\n"
        "from fish_worker.tts.loader import load_tts\nfrom fish_worker.settings import Settings\n"
        f"load_tts(Settings(checkpoint_dir={str(checkpoint)!r}, device={device!r}, warmup=False))\n"
        "print(time.perf_counter() - t)"
    )
    bare = (
        "import time; t = time.perf_counter()\nimport torch\n"
        f"for f in ('model.pth', 'codec.pth'): torch.load({str(checkpoint)!r} + '/' + f, map_location={device!r})\n"
        "print(time.perf_counter() - t)"
    )
    _timed_subprocess(bare)
    worker_s = min(_timed_subprocess(worker) for _ in range(2))
    bare_s = min(_timed_subprocess(bare) for _ in range(2))
    return {"worker_import_and_load_s": worker_s, "bare_torch_load_s": bare_s, "ratio": worker_s / bare_s}


def print_table(results: dict) -> None:
    ss = results["single_stream"]
    rows = [("single stream tokens/s", ss["worker_tokens_per_s"], ss["fish_speech_tokens_per_s"], ss["ratio"])]
    for n, r in results["concurrency"].items():
        rows.append(
            (
                f"{n} concurrent jobs tokens/s",
                r["worker_tokens_per_s"],
                r["fish_speech_sequential_tokens_per_s"],
                r["ratio"],
            )
        )
    e2e = results.get("end_to_end")
    if e2e:
        for door in ("job_runner", "server"):
            r = e2e[door]
            rows.append(
                (f"{e2e['jobs']} jobs via {door} s (vs 1 by 1)", r["concurrent_s"], r["sequential_s"], r["ratio"])
            )
    fa = results["first_audio"]
    rows.append(("first audio s (vs full latency)", fa["first_audio_s"], fa["full_latency_s"], fa["ratio"]))
    cs = results.get("cold_start")
    if cs:
        rows.append(
            ("cold start s (vs bare torch.load)", cs["worker_import_and_load_s"], cs["bare_torch_load_s"], cs["ratio"])
        )
    print(f"\n{'measure':<40}{'worker':>12}{'baseline':>12}{'ratio':>9}")
    for name, ours, base, ratio in rows:
        print(f"{name:<40}{ours:>12.3f}{base:>12.3f}{ratio:>8.2f}x")
    print(
        f"\nsingle-stream RTF {ss['worker_rtf']:.3f}; same tokens as fish-speech: {ss['same_tokens']}; "
        f"streamed audio equals one-shot: {fa['streamed_equals_one_shot']} ({fa['chunks']} chunks; "
        f"max |diff| {fa['streamed_max_abs_diff']:.1e}, SNR {fa['streamed_snr_db']:.1f} dB)"
    )
    kv = results["kv_memory"]
    print(
        f"KV cache: {kv['bytes_per_token_bf16']:,} B/token in bf16; typical job ({kv['typical_job_tokens']} tokens) "
        f"{kv['typical_job_bytes_bf16'] / 1e6:.0f} MB; typical jobs per card {kv['typical_jobs_per_card']} "
        f"(full context per job: {kv['full_context_jobs_per_card']})"
    )
    print(f"peak memory: {results['memory']}")
    codec = (results.get("end_to_end") or {}).get("codec_batching")
    if codec:
        print(f"codec: {codec['decodes']} decodes in {codec['batches']} batched calls (FISH_CODEC_BATCH_FRAMES)")


def main() -> None:
    global FISH_DECODE_ONE_TOKEN
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer tokens per job (a smoke run)")
    parser.add_argument("--size", choices=["bench", "s1-mini"], default="bench")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="FISH_COMPILE for the worker; fish-speech's decode step compiled as its init_model does",
    )
    parser.add_argument("--levels", default=None, help="concurrent jobs to measure (default 1,4,8; cuda 1,8,16)")
    parser.add_argument("--max-tokens", type=int, default=None, help="frames per job (default 48, --quick 16)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="reuse a written checkpoint directory")
    parser.add_argument("--no-cold-start", action="store_true")
    parser.add_argument("--fish-jobs", type=int, default=8, help="jobs fish-speech's baseline runs one after another")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args()
    max_tokens = args.max_tokens or (16 if args.quick else 48)
    device = torch.device(args.device)
    levels = [int(x) for x in (args.levels or ("1,8,16" if device.type == "cuda" else "1,4,8")).split(",")]
    silence_logs()

    from fish_worker.tts.loader import load_tts
    from fish_worker.settings import Settings
    from fish_worker.devtools.tiny_checkpoint import write_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or Path(tmp) / f"{args.size}-ckpt"
        if not (checkpoint / "model.pth").is_file():
            write_tiny_checkpoint(checkpoint, seed=0, size=args.size)
        settings = Settings(
            checkpoint_dir=checkpoint,
            device=args.device,
            warmup=False,
            compile=args.compile,
            max_concurrency=max(levels),
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        service = load_tts(settings)
        if args.compile:
            from fish_speech.models.text2semantic.inference import decode_one_token_ar

            FISH_DECODE_ONE_TOKEN = torch.compile(
                decode_one_token_ar,
                fullgraph=True,
                **({"mode": "reduce-overhead"} if device.type == "cuda" else {"backend": "aot_eager"}),
            )
        silence_logs()
        results = {
            "machine": {
                "device": str(device),
                "cores": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                **({"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}),
            },
            "checkpoint": {
                "size": args.size,
                "max_tokens_per_job": max_tokens,
                "compile": args.compile,
                "precision": str(service.generator.caches.k[0].dtype),
                "parameters_m": round(sum(p.numel() for p in service.generator.model.parameters()) / 1e6, 1),
            },
            "single_stream": bench_single_stream(service, max_tokens),
            "concurrency": bench_concurrency(service, max_tokens, levels, args.fish_jobs),
            "end_to_end": bench_end_to_end(service, settings, max_tokens, max(n for n in levels if n <= 8)),
            "first_audio": bench_first_audio(service, max_tokens),
            "kv_memory": kv_memory(service),
            "memory": peak_memory(device),
        }
        if not args.no_cold_start:
            results["cold_start"] = bench_cold_start(checkpoint, args.device)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwritten to {args.out}")
    if not results["first_audio"]["streamed_equals_one_shot"]:
        print("FAILED: the streamed audio is not the one-shot decode of the same codes", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
