"""Output adjustments of generated speech: speed (pitch kept), volume (dB) and sample rate.

Shared by every door that offers them. `AudioPostProcessor` is streaming: it takes the model's
audio in pieces (as sentences are generated) and returns adjusted pieces, keeping the state of
each stage across pieces so the joins are seamless; concatenating its outputs equals adjusting
the whole clip at once (up to the time-stretch's windowing).

Stages, in this order:
  speed    FFmpeg's `atempo` filter through PyAV: WSOLA time-stretch, pitch kept. Chosen over
           librosa's phase vocoder (audible "phasiness" on speech, and whole-clip only) and Rubber
           Band (pyrubberband needs a CLI binary; pedalboard's time_stretch is whole-clip only, so
           streamed audio would have to wait for each sentence's end). atempo is stateful, so it
           streams; it is part of FFmpeg, which PyAV's wheels bundle.
  rate     soxr's streaming resampler (same library as the rest of the audio code).
  volume   a gain of 10^(dB/20); the encoders clip anything past full scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import soxr

MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 48_000
MIN_SPEED, MAX_SPEED = 0.5, 2.0
MIN_VOLUME_DB, MAX_VOLUME_DB = -20.0, 20.0


@dataclass(frozen=True)
class AudioAdjustments:
    """What to change about the model's audio; the defaults change nothing."""

    sample_rate: int | None = None  # None: the model's own rate (44.1 kHz)
    speed: float = 1.0
    volume_db: float = 0.0

    def __post_init__(self) -> None:
        # ValueError naming the field: each door turns it into its own 400.
        if self.sample_rate is not None and not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:
            raise ValueError(
                f"sample_rate must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE}; got {self.sample_rate}"
            )
        if not MIN_SPEED <= self.speed <= MAX_SPEED:
            raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}; got {self.speed}")
        if not MIN_VOLUME_DB <= self.volume_db <= MAX_VOLUME_DB:
            raise ValueError(f"volume must be between {MIN_VOLUME_DB:g} and {MAX_VOLUME_DB:g} dB; got {self.volume_db}")

    def output_rate(self, model_rate: int) -> int:
        return self.sample_rate or model_rate

    @property
    def is_identity(self) -> bool:
        return self.sample_rate is None and self.speed == 1.0 and self.volume_db == 0.0


class AudioPostProcessor:
    """Streaming speed → resample → volume for one output stream (one request)."""

    def __init__(self, adjustments: AudioAdjustments, model_rate: int) -> None:
        self.adjustments = adjustments
        self.input_rate = model_rate
        self.output_rate = adjustments.output_rate(model_rate)
        self._stretch = _TimeStretch(adjustments.speed, model_rate) if adjustments.speed != 1.0 else None
        self._resampler = (
            soxr.ResampleStream(model_rate, self.output_rate, 1, dtype="float32")
            if self.output_rate != model_rate
            else None
        )
        self._gain = np.float32(10 ** (adjustments.volume_db / 20))

    def process(self, audio: np.ndarray) -> np.ndarray:
        """The adjusted audio for the next piece (may be shorter or empty while a stage buffers)."""
        return self._run(np.asarray(audio, dtype=np.float32).reshape(-1), last=False)

    def flush(self) -> np.ndarray:
        """The rest, once the stream has ended; the processor is spent after this."""
        return self._run(np.zeros(0, dtype=np.float32), last=True)

    def _run(self, audio: np.ndarray, last: bool) -> np.ndarray:
        if self._stretch is not None:
            audio = self._stretch.process(audio, last)
        if self._resampler is not None:
            audio = self._resampler.resample_chunk(audio, last=last)
        if self._gain != 1:
            audio = audio * self._gain
        return audio.astype(np.float32, copy=False)


# Samples per frame pushed into atempo (23 ms at 44.1 kHz).
_STRETCH_FRAME = 1024


class _TimeStretch:
    """FFmpeg's atempo in a PyAV filter graph, fed and drained piece by piece."""

    def __init__(self, speed: float, sample_rate: int) -> None:
        import av  # only requests that change speed pay for importing FFmpeg
        import av.filter

        self._av = av
        self._rate = sample_rate
        self._pts = 0
        self._graph = av.filter.Graph()
        source = self._graph.add_abuffer(
            format="flt", sample_rate=sample_rate, layout="mono", time_base=Fraction(1, sample_rate)
        )
        tempo = self._graph.add("atempo", f"{speed:.6f}")
        sink = self._graph.add("abuffersink")
        source.link_to(tempo)
        tempo.link_to(sink)
        self._graph.configure()

    def process(self, audio: np.ndarray, last: bool) -> np.ndarray:
        out: list[np.ndarray] = []
        # atempo hands out output in blocks the size of its input frames (scaled by the speed) and
        # holds the block being filled: small frames keep what a stream waits for at ~50 ms, where
        # one 0.4 s chunk pushed whole would hold back ~0.3 s.
        for start in range(0, audio.size, _STRETCH_FRAME):
            piece = np.ascontiguousarray(audio[start : start + _STRETCH_FRAME])
            frame = self._av.AudioFrame.from_ndarray(piece[None, :], format="flt", layout="mono")
            frame.sample_rate = self._rate
            frame.pts = self._pts
            self._pts += piece.size
            self._graph.push(frame)
            self._drain(out)
        if last:
            self._graph.push(None)  # end of stream: atempo hands out what it still holds
            self._drain(out)
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros(0, dtype=np.float32)

    def _drain(self, out: list[np.ndarray]) -> None:
        while True:
            try:
                out.append(self._graph.pull().to_ndarray().reshape(-1))
            except (self._av.BlockingIOError, self._av.EOFError):
                return
