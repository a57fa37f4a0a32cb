"""The quick start's last step: one job through the worker, then a summary and a file you can play.

    python -m fish_worker.devtools.quickstart [--test_input JSON] [--out DIR] [--raw]

The job runs in this process exactly as `python handler.py --test_input` runs it (the queue's per-job
code, `worker.run_local_job`); the quick start only adds timing, a WAV of the audio and a readable
summary. What the platform would store goes to DIR/quickstart.json (`--raw` also prints it, as one line
on stdout, with the summary on stderr). The job defaults to ./test_input.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import soundfile as sf

from fish_worker.conversations import ConversationStoreError
from fish_worker.asr.whisper import WhisperModelError
from fish_worker.dialogue.llm import ChatModelError
from fish_worker.engine.checkpoint import CheckpointError
from fish_worker.jobs.runner import JobRunner
from fish_worker.settings import Settings, configure_logging
from fish_worker.worker import build_runner, run_local_job

DEFAULT_JOB = Path("test_input.json")


@dataclass(frozen=True)
class TimedJob:
    stored: dict[str, Any]  # what the platform stores: the job-done body (+ `stream` for streamed jobs)
    job_s: float  # from handing the job over to its job-done body
    first_audio_s: float | None  # streamed jobs: until the first chunk with audio was posted


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # float32 mono
    sample_rate: int


async def run_timed(runner: JobRunner, job: dict[str, Any]) -> TimedJob:
    started = time.perf_counter()
    first_audio: list[float] = []

    def on_stream(body: dict[str, Any]) -> None:
        if not first_audio and body["output"].get("audio"):
            first_audio.append(time.perf_counter() - started)

    stored = await run_local_job(runner, job, on_stream)
    return TimedJob(stored, time.perf_counter() - started, first_audio[0] if first_audio else None)


def outputs(stored: dict[str, Any]) -> list[dict[str, Any]]:
    """The result objects that hold audio: a streamed job's chunks, else its one output."""
    if "stream" in stored:
        return [body["output"] for body in stored["stream"]]
    return [stored["output"]] if isinstance(stored.get("output"), dict) else []


def joined_audio(chunks: list[dict[str, Any]]) -> Audio | None:
    """The job's audio in one piece, whatever its `audio_format` (streamed chunks join into one file)."""
    with_audio = [c for c in chunks if "audio" in c]
    if not with_audio:
        return None
    fmt = with_audio[0].get("audio_format", "float")
    rate = int(with_audio[0]["sample_rate"])
    if fmt == "float":
        return Audio(np.concatenate([np.asarray(c["audio"], dtype=np.float32) for c in with_audio]), rate)
    data = b"".join(base64.b64decode(c["audio"]) for c in with_audio)
    if fmt == "pcm16":
        return Audio(np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768, rate)
    return _decode_file(data)


# Encoded formats are written as the client received them (the joined chunks are one file); float
# and pcm16 carry bare samples, so they become a WAV.
FILE_EXTENSIONS = {"mp3": "mp3", "opus": "opus", "flac": "flac", "aac": "aac"}


def encoded_bytes(chunks: list[dict[str, Any]]) -> tuple[str, bytes] | None:
    """(extension, the file's bytes) for a job in an encoded format, else None."""
    with_audio = [c for c in chunks if "audio" in c]
    fmt = with_audio[0].get("audio_format", "float") if with_audio else None
    if fmt not in FILE_EXTENSIONS:
        return None
    return FILE_EXTENSIONS[fmt], b"".join(base64.b64decode(c["audio"]) for c in with_audio)


def _decode_file(data: bytes) -> Audio:
    import av  # wav/flac/mp3/opus, decoded by FFmpeg as players do

    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        to_float = av.AudioResampler(format="flt", layout="mono", rate=stream.rate)
        frames = [
            out.to_ndarray().reshape(-1) for frame in container.decode(stream) for out in to_float.resample(frame)
        ]
        rate = stream.rate
    return Audio(np.concatenate(frames) if frames else np.zeros(0, np.float32), rate)


def write_wav(audio: Audio, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.clip(audio.samples, -1.0, 1.0), audio.sample_rate, subtype="PCM_16")


def summary_lines(
    timed: TimedJob, load_s: float, audio_path: Path | None, audio: Audio | None, json_path: Path, tiny: bool
) -> list[str]:
    stored = timed.stored
    if "error" in stored:
        return [f"the job failed: {stored['error']}", f"  full result   {json_path}"]
    output = stored.get("output", {})
    chunks = outputs(stored)
    lines = [
        "one job through the worker, as `python handler.py --test_input` runs it:",
        f"  text          {output.get('text', '')}",
    ]
    if audio is not None and audio_path is not None:
        seconds = len(audio.samples) / audio.sample_rate
        lines.append(f"  audio         {audio_path}  ({seconds:.2f} s at {audio.sample_rate} Hz)")
    elif output.get("audio_url"):
        lines.append(f"  audio         {output['audio_url']} (too large for a result: uploaded)")
    else:
        lines.append(f"  output        {json.dumps(output)[:300]}")
    if output.get("seed") is not None:
        lines.append(f"  seed          {output['seed']}")
    lines.append(f"  model load    {load_s:.1f} s")
    lines.append(f"  job time      {timed.job_s:.2f} s")
    if "stream" in stored:
        first = f"{timed.first_audio_s:.2f} s" if timed.first_audio_s is not None else "none (no audio chunk)"
        lines.append(f"  first audio   {first}  (streamed in {len(chunks)} chunks)")
    else:
        lines.append('  first audio   with the whole result (add "stream": true to hear the first sentence sooner)')
    lines.append(f"  full result   {json_path}  (what RunPod stores; --raw prints it)")
    if tiny:
        lines.append("The tiny checkpoint has random weights: the audio is real codec output, but noise, not speech.")
    return lines


def is_tiny_checkpoint(settings: Settings) -> bool:
    # Only tiny_checkpoint.py writes codec overrides; the released checkpoint has none.
    return (Path(settings.checkpoint_dir) / "codec_config.yaml").is_file()


def run(
    job: dict[str, Any],
    out_dir: Path,
    settings: Settings,
    raw: bool = False,
    stdout: TextIO = sys.stdout,
    runner: JobRunner | None = None,
) -> int:
    """Load the worker (unless given its runner), run `job`, write out_dir/quickstart.json and the audio
    (quickstart.wav, or .mp3/.opus/.flac as the job's audio_format), print
    the summary; returns the exit code."""
    # The runpod SDK, imported now (after logging is set up, as handler.py does), not inside the job's timing.
    import fish_worker.jobs.runpod_adapter  # noqa: F401

    started = time.perf_counter()
    runner = runner or build_runner(settings)
    load_s = time.perf_counter() - started
    timed = asyncio.run(run_timed(runner, job))

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "quickstart.json"
    stored_json = json.dumps(timed.stored)
    json_path.write_text(stored_json + "\n")
    chunks = [] if "error" in timed.stored else outputs(timed.stored)
    audio = joined_audio(chunks) if chunks else None
    audio_path = None
    if audio is not None:
        encoded = encoded_bytes(chunks)
        if encoded is None:
            audio_path = out_dir / "quickstart.wav"
            write_wav(audio, audio_path)
        else:
            audio_path = out_dir / f"quickstart.{encoded[0]}"
            audio_path.write_bytes(encoded[1])

    lines = summary_lines(timed, load_s, audio_path, audio, json_path, is_tiny_checkpoint(settings))
    print("\n".join(lines), file=sys.stderr if raw else stdout)
    if raw:
        print(stored_json, file=stdout)
    return 1 if "error" in timed.stored else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fish_worker.devtools.quickstart", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--test_input", help='the job as JSON, {"input": {...}} (default: ./test_input.json)')
    parser.add_argument(
        "--out", type=Path, default=Path("out"), help="where quickstart.json and the audio file go (default: out)"
    )
    parser.add_argument("--raw", action="store_true", help="also print what the platform stores, as one JSON line")
    return parser.parse_args(argv)


def quiet_loading(settings: Settings) -> None:
    """Warnings only, unless FISH_LOG_LEVEL asks for more: the summary is the quick start's output."""
    level = settings.log_level if "FISH_LOG_LEVEL" in os.environ else "WARNING"
    configure_logging(level)
    if "FISH_LOG_LEVEL" not in os.environ:  # runpod's logger reads this once, when it is imported
        os.environ["RUNPOD_LOG_LEVEL"] = "WARN"
    from loguru import logger  # fish-speech logs its model config at INFO

    logger.remove()
    logger.add(sys.stderr, level=level.upper())
    # fish-speech's codec still calls torch's old weight_norm; harmless, and not the user's to fix.
    warnings.filterwarnings("ignore", message=".*weight_norm.* is deprecated", category=FutureWarning)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        job = json.loads(args.test_input) if args.test_input is not None else json.loads(DEFAULT_JOB.read_text())
    except (OSError, ValueError) as exc:
        sys.exit(f"cannot read the job: {exc}")
    if not isinstance(job, dict):
        sys.exit('the job must be a JSON object, {"input": {...}}')
    settings = Settings()
    quiet_loading(settings)
    try:
        sys.exit(run(job, args.out, settings, raw=args.raw))
    except (CheckpointError, ChatModelError, WhisperModelError, ConversationStoreError) as exc:
        sys.exit(f"cannot start: {exc}")


if __name__ == "__main__":
    main()
