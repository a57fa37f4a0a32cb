"""The quick start's last step (fish_worker/devtools/quickstart.py) on the tiny checkpoint: a playable
WAV, a short summary, and the full stored result beside them (the venv set-up is CI's to run)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import soundfile as sf

from fish_worker.audio.formats import StreamEncoder
from fish_worker.devtools import quickstart

STREAMED = {"input": {"message": "Quick one. Quick two.", "max_tokens": 6, "seed": 11, "stream": True}}


@pytest.fixture(scope="module")
def streamed_run(settings, tmp_path_factory):
    """One full run: the worker is loaded from the checkpoint as `bash scripts/quickstart.sh` does."""
    out_dir = tmp_path_factory.mktemp("out")
    stdout = io.StringIO()
    code = quickstart.run(json.loads(json.dumps(STREAMED)), out_dir, settings, stdout=stdout)
    return code, out_dir, stdout.getvalue()


@pytest.mark.timeout(240)
def test_streamed_job_ends_in_a_wav_of_its_chunks(streamed_run):
    code, out_dir, _ = streamed_run
    assert code == 0
    stored = json.loads((out_dir / "quickstart.json").read_text())
    assert stored.keys() == {"output", "stream"}  # what the platform stores: summary and chunks
    chunks = [body["output"]["audio"] for body in stored["stream"]]
    expected = np.concatenate([np.asarray(c, dtype=np.float32) for c in chunks])
    samples, rate = sf.read(out_dir / "quickstart.wav", dtype="float32")
    assert rate == 44100 and samples.ndim == 1
    assert len(samples) == len(expected)
    assert abs(len(samples) / 44100 - stored["output"]["duration_s"]) <= 0.001 * len(chunks)  # per-chunk rounding
    assert np.max(np.abs(samples - expected)) < 1e-4 + 1 / 32768  # 16-bit PCM of the same samples


def summary_fields(summary: str) -> dict[str, str]:
    """The summary's "  label   value" lines, by label."""
    return dict(line.strip().split("  ", 1) for line in summary.splitlines() if line.startswith("  "))


def test_summary_says_what_came_out_and_where(streamed_run):
    _, out_dir, summary = streamed_run
    assert len(summary) < 1500  # a summary, never the samples
    fields = {label: value.strip() for label, value in summary_fields(summary).items()}
    assert fields["text"] == "Quick one. Quick two."
    assert fields["audio"].startswith(f"{out_dir / 'quickstart.wav'}") and "at 44100 Hz" in fields["audio"]
    assert fields["seed"] == "11"
    job_s = float(fields["job time"].split()[0])
    first_s = float(fields["first audio"].split()[0])
    assert 0 < first_s <= job_s and "streamed in" in fields["first audio"]
    assert fields["full result"].startswith(f"{out_dir / 'quickstart.json'}")
    assert "random weights" in summary  # the tiny checkpoint's noise is not mistaken for a fault


@pytest.mark.timeout(120)
def test_raw_prints_exactly_the_stored_result_and_a_failed_job_writes_no_wav(settings, runner, tmp_path, capsys):
    stdout = io.StringIO()
    job = {"input": {"message": "", "seed": 1}}
    code = quickstart.run(job, tmp_path, settings, raw=True, stdout=stdout, runner=runner)
    assert code == 1 and not (tmp_path / "quickstart.wav").exists()
    stored = json.loads(stdout.getvalue())
    assert stored == json.loads((tmp_path / "quickstart.json").read_text())
    assert stored["error"].startswith("message:")
    assert "the job failed: message:" in capsys.readouterr().err  # --raw: the summary goes to stderr


@pytest.mark.parametrize("fmt", ["pcm16", "flac", "mp3", "opus", "wav"])
def test_encoded_stream_chunks_join_into_one_clip(fmt):
    rate = 44100
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    encoder = StreamEncoder(fmt, rate)
    payloads = [encoder.feed(tone[i : i + 9000]) for i in range(0, len(tone), 9000)] + [encoder.close()]
    chunks = [{"audio": payload, "audio_format": fmt, "sample_rate": encoder.sample_rate} for payload in payloads]
    audio = quickstart.joined_audio(chunks)
    assert audio.sample_rate == encoder.sample_rate
    seconds = len(audio.samples) / audio.sample_rate
    assert abs(seconds - 1.0) < 0.1  # lossy codecs pad by a frame or so
    assert 0.15 < float(np.sqrt(np.mean(audio.samples**2))) < 0.25  # the tone's level (0.3 / sqrt 2)


@pytest.mark.timeout(120)
def test_an_mp3_job_writes_the_mp3_it_returned(settings, runner, tmp_path):
    job = {"input": {"message": "Quick one.", "max_tokens": 6, "seed": 3, "audio_format": "mp3"}}
    assert quickstart.run(job, tmp_path, settings, stdout=io.StringIO(), runner=runner) == 0
    stored = json.loads((tmp_path / "quickstart.json").read_text())
    written = (tmp_path / "quickstart.mp3").read_bytes()
    assert written == base64.b64decode(stored["output"]["audio"])  # the client's bytes, as they came
    assert not (tmp_path / "quickstart.wav").exists()
